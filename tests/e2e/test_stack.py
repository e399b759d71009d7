"""The local stack cleans up after itself: no orphan processes on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import wait_for

pytestmark = pytest.mark.e2e


def processes_under(folder: Path) -> list[int]:
    """Pids whose working directory is inside ``folder`` (every part of a stack runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(int(entry.name))
    return found


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def read_dev_file(path: Path) -> dict[str, Any] | None:
    """``.kiln/dev.json`` once ``kiln dev`` wrote it (it is written whole, atomically)."""
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dev_stack_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Given ``kiln dev`` running, when it gets Ctrl-C or SIGTERM, then nothing it started lives on."""
    env = {**os.environ, "KILN_KEEP_STACK_LOGS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        env.pop(name, None)
    output = tmp_path / "kiln-dev.out"
    dev_file = tmp_path / ".kiln" / "dev.json"
    with output.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kiln_dev", "dev", "--port", "0"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                text=True)

    def running() -> dict[str, Any] | None:
        assert proc.poll() is None, f"kiln dev exited {proc.returncode}:\n{output.read_text()}"
        return read_dev_file(dev_file)

    try:
        dev = wait_for(running, timeout=90, interval=0.2, what="kiln dev to write .kiln/dev.json")
    except BaseException:
        proc.kill()
        raise
    assert dev["pid"] == proc.pid
    assert httpx.get(f"{dev['ingress']}/healthz").status_code == 200
    workdir = Path(dev["logs"]).parent
    assert len(processes_under(workdir)) >= 5  # emulators (+ their JVMs), storage, functions
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # kiln's faulthandler: every thread's stack
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # the dump is written meanwhile; the process lives on
        proc.kill()
        left = {pid: describe(pid) for pid in processes_under(workdir)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"kiln dev still running 60 s after {sig.name}; left: {left}\n"
                    + output.read_text()[-8000:])
    wait_for(lambda: processes_under(workdir) == [], timeout=20, what="no processes left")
    assert not dev_file.exists()
