"""``python -m kiln_dev.storage_emulator start …``: gcp-storage-emulator with a flat cost
per upload.

The emulator keeps every object's metadata in one index file (``.meta``) and rewrites it
whole, as indented JSON, after every upload: the n-th upload serialises n entries, so a
run's cost per job grows with the objects stored (measured in docs/benchmarks.md: 22 →
78 ms per job within one 640-job run). Its in-memory mode does the same serialisation.

Here an upload (simple, or a resumable session and its final object) appends its one
entry to a journal beside the index (``.meta.journal``, a line of JSON, written before the
answer as the index was, so a SIGKILLed emulator keeps it); every other change (buckets,
deletes, patches) still rewrites the index and empties the journal; on start the journal
is replayed over the index. Same
command line, same HTTP API, same files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from gcp_storage_emulator import storage as _storage
from gcp_storage_emulator.exceptions import NotFound

JOURNAL = ".meta.journal"
_Storage: Any = _storage.Storage
_full_write = _Storage._write_config_to_file
_full_read = _Storage._read_config_from_file


def _journal_path(self: Any) -> str | None:
    store = self._store
    root = getattr(store, "_root", None)
    return None if root is None else os.path.join(root, JOURNAL)


def _write_config_to_file(self: Any) -> None:
    _full_write(self)
    path = _journal_path(self)
    if path is not None and os.path.exists(path):
        os.truncate(path, 0)


def _read_config_from_file(self: Any) -> None:
    _full_read(self)
    path = _journal_path(self)
    if path is None or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as journal:
        for line in journal:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write: its request was never answered
            if "resumable" in entry:
                self.resumable[entry["resumable"]] = entry["object"]
                continue
            self.resumable.pop(entry.get("dropResumable"), None)
            self.objects.setdefault(entry["bucket"], {})[entry["name"]] = entry["object"]


def _journal(self: Any, entry: dict[str, Any]) -> bool:
    """Append ``entry`` to the journal; False when there is none (in-memory mode)."""
    path = _journal_path(self)
    if path is None:
        return False
    with open(path, "a", encoding="utf-8") as journal:
        journal.write(json.dumps(entry) + "\n")
    return True


def create_file(self: Any, bucket_name: str, file_name: str, content: bytes,
                file_obj: dict[str, Any], file_id: str | None = None) -> None:
    """The emulator's ``create_file``, journaling the one new entry."""
    if bucket_name not in self.buckets:
        raise NotFound
    self._store.write_bytes(self._object_path(bucket_name, file_name), content)
    self.objects.setdefault(bucket_name, {})[file_name] = file_obj
    if file_id:
        self.delete_resumable_file_obj(file_id)
        self._delete_file(_storage.RESUMABLE_DIR, self.safe_id(file_id))
    if not _journal(self, {"bucket": bucket_name, "name": file_name, "object": file_obj,
                           "dropResumable": file_id}):
        self._write_config_to_file()


def create_resumable_upload(self: Any, bucket_name: str, file_name: str,
                            file_obj: dict[str, Any]) -> str:
    """The emulator's ``create_resumable_upload``, journaling the session."""
    if bucket_name not in self.buckets:
        raise NotFound
    file_id = f"{bucket_name}:{file_name}:{dt.datetime.now()}"
    self.resumable[file_id] = file_obj
    if not _journal(self, {"resumable": file_id, "object": file_obj}):
        self._write_config_to_file()
    return file_id


def install() -> None:
    """Patch the emulator's ``Storage`` in this process."""
    _Storage._write_config_to_file = _write_config_to_file
    _Storage._read_config_from_file = _read_config_from_file
    _Storage.create_file = create_file
    _Storage.create_resumable_upload = create_resumable_upload


if __name__ == "__main__":
    install()
    from gcp_storage_emulator.__main__ import main

    main()
