"""The operator CLI without its stack: a clear line and exit 2, never a traceback or a
wait that never ends (a newcomer ran `kiln trace` after `make demo` had stopped its
stack, and `kiln watch` on a mistyped id)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.compose import Services
from kiln.settings import Settings
from kiln_dev import cli
from kiln_dev.fakes import FakeClock, InMemoryJobStore


@pytest.fixture
def no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_no_stack_and_no_credentials_says_to_start_make_dev(
        no_stack: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(no_stack / "none.json"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-cli")
    cli._services_for.cache_clear()
    assert cli.main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert "make dev" in err and "Traceback" not in err


def test_a_stale_dev_file_is_named_not_waited_on(
        no_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given .kiln/dev.json left by a kiln dev that was killed (its pid gone), then a
    command says so at once (its emulators would never answer: it hung)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (no_stack / ".kiln").mkdir()
    (no_stack / ".kiln" / "dev.json").write_text(json.dumps(
        {"env": {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"}, "pid": gone.pid}))
    os.chdir(no_stack / ".kiln")  # found from a folder inside, too
    assert cli.main(["trace", "0123456789abcdef0123"]) == 2
    assert f"pid {gone.pid}" in capsys.readouterr().err


def test_watch_of_a_job_that_does_not_exist_ends_at_once(
        no_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    services = Services(Settings(project="demo-cli"), store=InMemoryJobStore(FakeClock()))
    assert cli.main(["watch", "nosuchjob"], services=lambda: services) == 1
    assert "no job nosuchjob" in capsys.readouterr().err


def fake_services() -> Services:
    return Services(Settings(project="demo-cli"), store=InMemoryJobStore(FakeClock()))


@pytest.mark.parametrize("argv", [
    ["jobs", "show", "a/b"], ["jobs", "cancel", "a/b"], ["jobs", "retry", ""],
    ["jobs", "show", "__reserved__"], ["trace", "a/b"], ["watch", "../x"],
    ["webhooks", "remove", "a/b"], ["webhooks", "replay", ".."],
    ["webhooks", "secret", "--tenant", "a/b"], ["webhooks", "secret", "--tenant", "ACME"],
    ["webhooks", "add", "--tenant", "", "https://hooks.example.com/x"],
    ["jobs", "list", "--limit", "-3"], ["jobs", "list", "--limit", "0"],
    ["webhooks", "deliveries", "--limit", "-1"], ["dlq", "list", "--limit", "x"],
    ["trace", "0123456789abcdef0123", "--width", "-5"],
    ["trace", "0123456789abcdef0123", "--width", "10000000"],
    ["jobs", "list", "--limit", "1000000000"],
])
def test_an_argument_that_cannot_be_one_is_refused_before_any_store_is_asked(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """An id with a slash, a reserved or empty id, a tenant no key can have, a count that is
    not positive or far too large: argparse's line and exit 2 (they made Firestore path errors, tracebacks,
    or `--limit -3` listing all but the oldest three)."""
    def no_store() -> Services:
        raise AssertionError("no store may be asked")

    with pytest.raises(SystemExit) as exited:
        cli.main(argv, services=no_store)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_a_key_id_that_cannot_be_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "revoke", "kiln_a/b"], services=fake_services) == 2
    assert "not a key id" in capsys.readouterr().err


def test_a_store_that_does_not_answer_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A RetryableError out of a command (the store, the queue, a host's DNS) is a line and
    exit 2, not a traceback."""
    services = fake_services()
    services.store.unavailable = True  # type: ignore[attr-defined]
    assert cli.main(["jobs", "show", "0123456789abcdef0123"], services=lambda: services) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: ") and "unavailable" in err and "Traceback" not in err


def test_an_emulator_that_takes_no_connection_is_said_at_once(
        no_stack: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """FIRESTORE_EMULATOR_HOST naming a port nobody listens on: a line at once (the client
    retried for about five minutes, then printed a traceback)."""
    import socket
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-cli")
    cli._services_for.cache_clear()
    assert cli.main(["jobs", "show", "0123456789abcdef0123"]) == 2
    assert f"127.0.0.1:{port} does not answer" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{", '{"pid": 1}', "[]", '{"env": 3}'])
def test_a_damaged_dev_file_is_named(no_stack: Path, capsys: pytest.CaptureFixture[str],
                                     text: str) -> None:
    (no_stack / ".kiln").mkdir()
    (no_stack / ".kiln" / "dev.json").write_text(text)
    assert cli.main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert "not a file `kiln dev` wrote" in err and "Traceback" not in err
