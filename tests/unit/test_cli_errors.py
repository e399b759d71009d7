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
