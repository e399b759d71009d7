"""The local stack starts beside others and cleans up after itself: a part whose port was
taken moves to another; no orphan processes on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln_dev.stack import LocalStack, StackConfig
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


class KilnDev:
    """``kiln dev`` as a user starts it, in ``folder``, with its output kept."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        env = {**os.environ, "KILN_KEEP_STACK_LOGS": "1", "PYTHONUNBUFFERED": "1"}
        for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
            env.pop(name, None)
        self.output = folder / "kiln-dev.out"
        self.dev_file = folder / ".kiln" / "dev.json"
        with self.output.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kiln_dev", "dev", "--port", "0"],
                                         cwd=folder, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, text=True)
        self.workdir: Path | None = None

    def wait_up(self) -> None:
        def running() -> dict[str, Any] | None:
            assert self.proc.poll() is None, \
                f"kiln dev exited {self.proc.returncode}:\n{self.output.read_text()}"
            return read_dev_file(self.dev_file)

        dev = wait_for(running, timeout=90, interval=0.2, what="kiln dev to write .kiln/dev.json")
        assert dev["pid"] == self.proc.pid
        assert httpx.get(f"{dev['ingress']}/healthz").status_code == 200
        self.workdir = Path(dev["logs"]).parent
        assert len(processes_under(self.workdir)) >= 5  # emulators (+ JVMs), storage, functions

    def assert_stops(self, sig: signal.Signals) -> None:
        """Exited within 60 s of ``sig`` (sent already), leaving no process behind."""
        assert self.workdir is not None
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # kiln's faulthandler: every thread's stack
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)  # the dump is written meanwhile; the process lives on
            left = {pid: describe(pid) for pid in processes_under(self.workdir)}
            self.kill()
            pytest.fail(f"kiln dev still running 60 s after {sig.name}; left: {left}\n"
                        + self.output.read_text()[-8000:])
        workdir = self.workdir
        wait_for(lambda: processes_under(workdir) == [], timeout=20, what="no processes left")
        assert not self.dev_file.exists()

    def kill(self) -> None:
        self.proc.kill()
        for pid in processes_under(self.workdir) if self.workdir else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_dev_stacks_side_by_side_stop_every_process_on_ctrl_c_and_sigterm(tmp_path: Path) -> None:
    """Given two ``kiln dev`` stacks running side by side (free ports each), when one gets
    Ctrl-C and the other SIGTERM, then each exits and nothing either started lives on."""
    devs = {sig: KilnDev(tmp_path / sig.name) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for dev in devs.values():
            dev.wait_up()
        for sig, dev in devs.items():
            dev.proc.send_signal(sig)
        for sig, dev in devs.items():
            dev.assert_stops(sig)
    finally:
        for dev in devs.values():
            if dev.proc.poll() is None:
                dev.kill()


def test_parts_whose_picked_ports_are_taken_before_they_bind_start_on_others(
        tmp_path: Path) -> None:
    """Given a stack whose picked Storage and ingress ports other processes bind first
    (stacks starting side by side race for free ports), when the parts start, then each is
    started again on a new port and answers there (the Storage emulator lives on after a
    failed bind, gunicorn retries it: both are seen)."""
    stack = LocalStack(StackConfig(workdir=tmp_path))
    host, taken = stack.config.host, (stack.config.storage_port, stack.config.ingress_port)
    with socket.socket() as storage_squatter, socket.socket() as ingress_squatter:
        storage_squatter.bind((host, taken[0]))
        ingress_squatter.bind((host, taken[1]))
        try:
            deadline = time.monotonic() + 60
            stack._spawn_emulator("storage", "gcloud")
            stack._wait_emulator("storage", "gcloud", deadline)
            stack._start_functions(deadline)
            moved = (stack.config.storage_port, stack.config.ingress_port)
            assert moved[0] != taken[0] and moved[1] != taken[1]
            assert httpx.get(f"http://{host}:{moved[0]}/", timeout=5).status_code == 200
            assert httpx.get(f"{stack.ingress_url}/healthz", timeout=5).status_code == 200
        finally:
            stack.stop()
