"""A webhook attempt ends by its deadline (the receiver's timeout, counted from the
attempt's start) however the receiver dribbles its answer: a receiver that sends its
status line and headers a byte at a time no longer holds the worker past the timeout.

The receiver is a real socket server on 127.0.0.1 (one thread per connection); each
attempt runs in a thread and the test waits on it with a bound, so the old behaviour
(an attempt alive as long as the bytes keep coming) fails instead of hanging."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hookkit import build_kit

from kiln.webhooks import delivery, events, model, send
from kiln.webhooks.delivery import AttemptOutcome
from kiln.webhooks.model import DeliveryState, Endpoint

#: How long past its timeout an attempt may take to end (a loaded machine, the records).
MARGIN = 3.0
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass
class Dripper:
    """Answers every request a byte every ``every`` seconds: ``ANSWER`` and then, unless
    ``finish``, header bytes without end (until the client hangs up or the test ends)."""

    every: float
    finish: bool = False
    requests: threading.Event = field(default_factory=threading.Event)
    hung_up: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        threading.Thread(target=self._serve, daemon=True, name="dripper").start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # the accept timed out, or the socket was closed
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            body = ANSWER if self.finish else ANSWER[:-2] + b"X-Drip: " + b"a" * 10_000_000
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    more = conn.recv(65536)
                    if not more:
                        return
                    request += more
                self.requests.set()
                for i in range(len(body)):
                    if self.stop.wait(self.every):
                        return
                    conn.sendall(body[i:i + 1])
            except OSError:  # the client hung up: the attempt is over
                self.hung_up.set()


@pytest.fixture
def dripper() -> Iterator[Dripper]:
    d = Dripper(every=0.1)
    yield d
    d.close()


def run_bounded(bound: float, call: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    """``call(*args, **kw)`` in a thread; its result and seconds taken, or a failure if it
    is still running after ``bound`` seconds."""
    outcome: list[Any] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: outcome.append(call(*args, **kw)), daemon=True)
    thread.start()
    thread.join(bound)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still running after {elapsed:.1f} s (bound {bound} s)"
    return outcome[0], elapsed


def test_a_receiver_dripping_its_headers_is_cut_at_the_timeout(dripper: Dripper) -> None:
    """Given a receiver that sends its status line and headers a byte every 0.1 s (each read
    well inside the 1 s timeout), when one POST is made with a 1 s timeout, then it ends
    within the timeout plus a margin as a timeout with a clear reason, and the receiver
    sees the connection closed."""
    result, elapsed = run_bounded(1.0 + MARGIN, send.post, dripper.url(), b"{}", {},
                                  allow_local=True, timeout=1.0)
    assert dripper.requests.is_set()
    assert result.status is None and result.error == "timeout"
    assert "1 s" in result.detail
    assert elapsed >= 0.9 and result.ms >= 900
    assert dripper.hung_up.wait(5)


def test_a_dripping_receiver_is_a_failed_attempt_and_the_next_is_scheduled(
        dripper: Dripper) -> None:
    """Given an endpoint whose receiver drips its headers, when its delivery is attempted
    with a 1 s receiver timeout, then the attempt ends within the timeout plus a margin
    (well inside the 45 s lease), is recorded as a timeout, and attempt 2 is scheduled."""
    assert model.ATTEMPT_LEASE.total_seconds() > model.RECEIVER_TIMEOUT + MARGIN
    kit = build_kit(webhook_timeout_seconds=1.0)
    kit.hooks.put_endpoint(Endpoint(model.new_endpoint_id(), "acme", dripper.url(),
                                    model.new_secret(), created_at=kit.clock.now()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    [(delivery_id, number)] = kit.pending_wakes()
    outcome, _elapsed = run_bounded(1.0 + MARGIN, delivery.attempt, kit.services,
                                    delivery_id, number)
    assert outcome is AttemptOutcome.RETRY
    [attempt] = kit.hooks.attempts(delivery_id)
    assert attempt["status"] is None and attempt["error"] == "timeout"
    record = kit.hooks.delivery(delivery_id)
    assert record is not None and record.state is DeliveryState.PENDING
    assert record.attempt == 2 and record.lease_until is None
    [wake] = kit.scheduler.pending.values()  # attempt 2's wake-up, on the schedule's 5 s
    assert (wake.job_id, wake.check) == (delivery_id, 2) and wake.at > kit.clock.now()


def test_a_slow_answer_inside_the_timeout_still_counts() -> None:
    """Given a receiver that sends its whole answer a byte every 10 ms (about 0.6 s), when
    one POST is made with a 5 s timeout, then the 200 counts: the deadline bounds the
    attempt, it does not cut a receiver that answers in time."""
    dripper = Dripper(every=0.01, finish=True)
    try:
        result, _elapsed = run_bounded(5.0 + MARGIN, send.post, dripper.url(), b"{}", {},
                                       allow_local=True, timeout=5.0)
    finally:
        dripper.close()
    assert result.ok and result.status == 200


def test_a_host_lookup_that_never_answers_is_cut_at_the_timeout() -> None:
    """Given a resolver stuck in its retries, an attempt with a 1 s timeout still ends by
    then (the system's lookup has no timeout of its own), failed as ``dns``."""
    entered, release = threading.Event(), threading.Event()

    def stuck(_host: str, _port: int) -> list[str]:
        entered.set()
        release.wait(30)
        return ["93.184.216.34"]

    try:
        result, _ = run_bounded(1.0 + MARGIN, send.post, "https://hook.example/h", b"{}", {},
                                allow_local=False, timeout=1.0, resolve=stuck)
        assert entered.is_set() and (result.status, result.error) == (None, "dns")
    finally:
        release.set()


def test_an_attempt_that_outlived_its_lease_changes_nothing_of_the_one_that_took_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given worker A held up past its lease in a host lookup, when worker B takes the same
    attempt and the receiver answers 200, then A, finishing late with a failed lookup,
    neither replaces B's record nor schedules another attempt: the delivery stays
    succeeded with one record, 200."""
    dripper = Dripper(every=0.001, finish=True)
    port = int(dripper.url().rsplit(":", 1)[1].split("/")[0])
    in_lookup, release, calls = threading.Event(), threading.Event(), []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kw: Any) -> Any:
        if host != "localhost":
            return real(host, *args, **kw)
        calls.append(host)
        if len(calls) == 1:  # worker A: held up, then the lookup fails
            in_lookup.set()
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    kit = build_kit(webhook_timeout_seconds=30.0)
    kit.hooks.put_endpoint(Endpoint(model.new_endpoint_id(), "acme",
                                    f"http://localhost:{port}/hook", model.new_secret(),
                                    created_at=kit.clock.now()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j",
                data={})
    [(delivery_id, number)] = kit.pending_wakes()
    late: list[Any] = []
    a = threading.Thread(target=lambda: late.append(
        delivery.attempt(kit.services, delivery_id, number)), daemon=True)
    try:
        a.start()
        assert in_lookup.wait(5)
        kit.clock.advance(model.ATTEMPT_LEASE.total_seconds() + 1)
        taken, _ = run_bounded(5.0, delivery.attempt, kit.services, delivery_id, number)
        assert taken is AttemptOutcome.SUCCEEDED
    finally:
        release.set()
        a.join(5)
        dripper.close()
    assert late == [AttemptOutcome.STALE]
    assert [(r["number"], r["status"]) for r in kit.hooks.attempts(delivery_id)] == [(1, 200)]
    record = kit.hooks.delivery(delivery_id)
    assert record is not None and record.state is DeliveryState.SUCCEEDED
    assert kit.pending_wakes() == []
