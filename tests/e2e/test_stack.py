"""The local stack cleans up after itself: no orphan processes on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dev_stack_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Given ``kiln dev`` running, when it gets Ctrl-C or SIGTERM, then nothing it started lives on."""
    env = {**os.environ, "KILN_KEEP_STACK_LOGS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "kiln_dev", "dev", "--port", "0"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while not any("Ctrl-C stops everything" in line for line in lines):
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    text = "".join(lines)
    ingress = re.search(r"ingress\s+(http://\S+)", text)
    logs = re.search(r"logs\s+(\S+)", text)
    assert ingress and logs
    assert httpx.get(f"{ingress[1]}/healthz").status_code == 200
    workdir = Path(logs[1]).parent
    assert len(processes_under(workdir)) >= 5  # emulators (+ their JVMs), storage, functions
    assert (tmp_path / ".kiln" / "dev.json").exists()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # kiln's faulthandler: every thread's stack
        time.sleep(2)
        proc.kill()
        left = {pid: describe(pid) for pid in processes_under(workdir)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"kiln dev still running 60 s after {sig.name}; left: {left}\n"
                    + proc.communicate()[0][-8000:])
    wait_for(lambda: processes_under(workdir) == [], timeout=20, what="no processes left")
    assert not (tmp_path / ".kiln" / "dev.json").exists()
