"""What the local Cloud Tasks emulator (``kiln_dev.tasks_emulator``) does beyond the
Scheduler contract, driven through the real ``CloudTasksScheduler``: tasks run
concurrently, a hung target times out and is retried, a name stays taken after its task
ran, and ``--drop-rate`` loses tasks on purpose (counted in ``/stats``)."""

from __future__ import annotations

import datetime as dt
import http.server
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.adapters.cloudtasks import CloudTasksScheduler
from kiln.settings import Settings
from kiln_dev.stack import TASKS_PYTHON, free_port
from support import wait_for

LAUNCHER = Path(__file__).resolve().parents[2] / "dev" / "kiln_dev" / "tasks_emulator.py"


class Target:
    """An HTTP target on 127.0.0.1: records each request; ``behave`` decides the answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.behave = lambda _headers: None  # may block or raise
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target.requests.append(dict(self.headers))
                try:
                    target.behave(self.headers)
                    self.send_response(200)
                except threading.BrokenBarrierError:
                    self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/publish"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def named(self, task: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["X-CloudTasks-TaskName"] == task]


class Emulator:
    def __init__(self, *args: str) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [str(TASKS_PYTHON), str(LAUNCHER), f"--port={self.port}",
             f"--http-port={self.http_port}", "--dispatch-timeout=1", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ready, 20, what="the tasks emulator")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "the tasks emulator exited"
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.http_port}/stats", timeout=5).json()  # type: ignore[no-any-return]

    def scheduler(self, target: Target) -> CloudTasksScheduler:
        settings = Settings(env="local", project="demo-tasks", pubsub_emulator_host="unused:1",
                            tasks_emulator_host=f"127.0.0.1:{self.port}")
        scheduler = CloudTasksScheduler.connect(settings, timeout=5)
        scheduler.publish_url = target.url
        return scheduler

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    running = Emulator()
    yield running
    running.stop()


@pytest.fixture
def target() -> Iterator[Target]:
    running = Target()
    yield running
    running.server.shutdown()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_due_tasks_are_dispatched_concurrently(emulator: Emulator, target: Target) -> None:
    """Given four due tasks whose target answers only once all four are in, then all four
    get 200: they were in flight together (one at a time would break the barrier)."""
    barrier = threading.Barrier(4, timeout=5)
    target.behave = lambda _h: barrier.wait()
    scheduler, job = emulator.scheduler(target), uuid.uuid4().hex[:16]
    for check in range(4):
        assert scheduler.schedule(job, check, now())
    wait_for(lambda: len(target.requests) >= 4, 10, what="four dispatches")
    assert not barrier.broken
    assert len(target.requests) == 4


def test_a_hung_target_times_out_and_the_task_is_retried(emulator: Emulator, target: Target) -> None:
    """Given a target that hangs past the dispatch timeout (1 s) on the first try, then the
    attempt counts as failed and the task comes again with retry count 1."""
    first = threading.Event()

    def hang_once(headers: Any) -> None:
        if headers["X-CloudTasks-TaskRetryCount"] == "0":
            first.wait(3)

    target.behave = hang_once
    failed = emulator.stats()["failed"]
    job = uuid.uuid4().hex[:16]
    assert emulator.scheduler(target).schedule(job, 1, now())
    retried = wait_for(lambda: [r for r in target.named(f"{job}-c1")
                                if r["X-CloudTasks-TaskRetryCount"] == "1"], 10, what="a retry")
    first.set()
    assert len(retried) == 1 and emulator.stats()["failed"] > failed


def test_a_name_stays_taken_after_its_task_ran(emulator: Emulator, target: Target) -> None:
    scheduler, job = emulator.scheduler(target), uuid.uuid4().hex[:16]
    assert scheduler.schedule(job, 1, now())
    wait_for(lambda: target.named(f"{job}-c1"), 10, what="the dispatch")
    refused = emulator.stats()["refused_duplicates"]
    assert scheduler.schedule(job, 1, now()) is False
    assert emulator.stats()["refused_duplicates"] == refused + 1


def test_drop_rate_loses_tasks_on_purpose(target: Target) -> None:
    """Given --drop-rate 1, then every task is accepted (names taken) and counted dropped,
    and none is dispatched."""
    lossy = Emulator("--drop-rate=1", "--seed=7")
    try:
        scheduler, job = lossy.scheduler(target), uuid.uuid4().hex[:16]
        assert all(scheduler.schedule(job, check, now()) for check in range(3))
        assert scheduler.schedule(job, 0, now()) is False
        stats = lossy.stats()
        assert (stats["created"], stats["dropped"], stats["refused_duplicates"]) == (3, 3, 1)
        assert stats["dispatched"] == 0
    finally:
        lossy.stop()
