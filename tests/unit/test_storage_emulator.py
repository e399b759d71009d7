"""The local Storage emulator's journal (``kiln_dev.storage_emulator``): an upload writes
one line, not the whole index, and a restarted emulator finds every answered upload."""

from __future__ import annotations

from pathlib import Path

from gcp_storage_emulator.storage import Storage

from kiln_dev import storage_emulator

storage_emulator.install()


def test_uploads_append_to_the_journal_and_survive_a_restart(tmp_path: Path) -> None:
    """Given an emulator with a bucket, when 50 objects are uploaded (simple and resumable),
    then the index file is not rewritten, the journal holds one line per change, and a new
    emulator on the same directory (as after a SIGKILL) lists every object and no open
    session."""
    store = Storage(data_dir=str(tmp_path))
    store.create_bucket("b", {"name": "b"})
    index = next(tmp_path.rglob(".meta"))
    before = index.read_bytes()
    for i in range(25):
        store.create_file("b", f"simple/{i}", b"x" * i, {"name": f"simple/{i}", "size": i})
        session = store.create_resumable_upload("b", f"resumable/{i}", {"name": f"resumable/{i}"})
        assert store.add_to_resumable_upload(session, b"data", total_size=4) == b"data"
        store.create_file("b", f"resumable/{i}", b"data", {"name": f"resumable/{i}"}, session)
    assert index.read_bytes() == before
    journal = index.with_name(storage_emulator.JOURNAL)
    assert len(journal.read_text().splitlines()) == 75

    again = Storage(data_dir=str(tmp_path))
    assert sorted(again.objects["b"]) == sorted(
        [f"simple/{i}" for i in range(25)] + [f"resumable/{i}" for i in range(25)])
    assert again.resumable == {}
    assert again.get_file("b", "resumable/24") == b"data"


def test_any_other_change_folds_the_journal_into_the_index(tmp_path: Path) -> None:
    store = Storage(data_dir=str(tmp_path))
    store.create_bucket("b", {"name": "b"})
    store.create_file("b", "kept", b"1", {"name": "kept"})
    store.create_file("b", "gone", b"2", {"name": "gone"})
    store.delete_file("b", "gone")  # a full index write
    journal = next(tmp_path.rglob(storage_emulator.JOURNAL))
    assert journal.read_text() == ""
    assert sorted(Storage(data_dir=str(tmp_path)).objects["b"]) == ["kept"]
