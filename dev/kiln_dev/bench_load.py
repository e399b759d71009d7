"""The benchmark's one load generator and its meters (``kiln_dev.bench``).

A closed loop: ``concurrency`` threads each send the next request as soon as their last
one was answered, so every target (Kiln, its floor, the Celery peer) sees the same client;
the HTTP targets are sent to on lean keep-alive connections (:class:`Connection`).
CPU seconds and RSS are read from ``/proc`` for whole process groups (each part of a
stack runs in a session of its own), so a gunicorn arbiter's workers or a JVM's threads
are all counted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kiln_dev import procfs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Run:
    """One closed-loop run: latencies in ms and its wall time in s."""

    latencies: list[float]
    wall: float

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall


def closed_loop(send: Callable[[int], None], requests: int, concurrency: int,
                warmup: int | None = None) -> Run:
    """``requests`` calls of ``send(i)`` from ``concurrency`` threads (after ``warmup``
    unmeasured ones, by default one per thread); ``send`` raises on a wrong answer."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def one() -> None:
        i = next(counter)
        started = time.perf_counter()
        send(i)
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            latencies.append(elapsed)

    def loop(n: int) -> None:
        for _ in range(n):
            one()

    with ThreadPoolExecutor(concurrency) as pool:
        share = [warmup if warmup is not None else 1] * concurrency
        list(pool.map(loop, share))
        latencies.clear()
        shares = [requests // concurrency + (1 if k < requests % concurrency else 0)
                  for k in range(concurrency)]
        started = time.perf_counter()
        list(pool.map(loop, shares))
        wall = time.perf_counter() - started
    return Run(list(latencies), wall)


def metered_loop(send: Callable[[int], None], requests: int, concurrency: int,
                 cpu: Callable[[], float]) -> tuple[Run, float]:
    """:func:`closed_loop` of ``send`` and the CPU ``cpu()`` (seconds so far) counted
    meanwhile, in ms per request sent: its warm-up (one request per client) included,
    since the meter runs over it too."""
    before = cpu()
    run = closed_loop(send, requests, concurrency)
    return run, (cpu() - before) / (requests + concurrency) * 1000


class _ClosedEarly(ConnectionError):
    """The server closed the connection before any byte of the answer."""


class Connection:
    """One keep-alive HTTP/1.1 connection of the load generator: a raw socket, the request
    sent as prepared bytes, the response read by its status line, headers and
    ``Content-Length`` body. A general client (httpx) spent 0.7–0.8 ms of the benchmark's
    CPU per ``POST /v1/jobs`` and added 0.9–1.5 ms to each one it recorded at one client
    (docs/benchmarks.md, the twelfth pass), time that is the load generator's, not the
    server's; this one spends about 0.1 ms.

    A request that finds its reused connection closed by the server (an idle keep-alive
    timeout) before any byte of the answer is sent once more on a new connection, as
    HTTP clients do; any other failure raises.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.address, self.timeout = (host, port), timeout
        self._sock: socket.socket | None = None

    def round_trip(self, request: bytes) -> tuple[int, bytes]:
        """The answer's status and body."""
        reused = self._sock is not None
        try:
            try:
                return self._exchange(request)
            except _ClosedEarly:
                if not reused:
                    raise
                self.close()
                return self._exchange(request)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self._sock
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            raise _ClosedEarly("the server closed the connection before answering") from None
        data = bytearray()
        while (end := data.find(b"\r\n\r\n")) < 0:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if data:
                    raise ConnectionError("the server closed the connection mid-answer")
                raise _ClosedEarly("the server closed the connection before answering")
            data += chunk
        lines = bytes(data[:end]).decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {name.strip().lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            raise ConnectionError(f"an answer without Content-Length: {lines[0]}")
        size = int(headers["content-length"])
        body = data[end + 4:]
        while len(body) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection mid-answer")
            body += chunk
        keep = headers.get("connection", "").lower()
        if keep == "close" or (version == "HTTP/1.0" and keep != "keep-alive"):
            self.close()
        return int(status), bytes(body[:size])


@contextlib.contextmanager
def job_poster(url: str, token: str, concurrency: int,
               label: str) -> Iterator[Callable[[int], None]]:
    """``send(i)`` for :func:`closed_loop`: one ``POST /v1/jobs`` (an image, prompt
    ``"{label} {i}"``) to the ingress at ``url`` (``http://host:port``) as ``token``'s
    user, each calling thread on a :class:`Connection` of its own. Raises unless the job
    was accepted (202)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port
    if parts.scheme != "http" or host is None or port is None:
        raise ValueError(f"job_poster takes http://host:port, not {url!r}")
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n")
    mine = threading.local()
    opened: list[Connection] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        connection = getattr(mine, "connection", None)
        if connection is None:
            connection = mine.connection = Connection(host, port)
            with lock:
                opened.append(connection)
        body = json.dumps({"kind": "image", "prompt": f"{label} {i}"}).encode()
        status, answer = connection.round_trip(
            f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        if status != 202:
            raise RuntimeError(f"{label}: {status} {answer.decode(errors='replace')}")

    try:
        yield post
    finally:
        for connection in opened:
            connection.close()


def _group_pids(pgids: Iterable[int]) -> list[int]:
    wanted = set(pgids)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            group = procfs.stat(entry / "stat").pgrp
        except (OSError, ValueError, IndexError):
            continue
        if group in wanted:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pgids: Iterable[int]) -> float:
    """User + system CPU of every live process in the groups, with their reaped children."""
    total = 0.0
    for pid in _group_pids(pgids):
        try:
            total += procfs.stat(f"/proc/{pid}/stat").cpu_with_children
        except (OSError, ValueError, IndexError):
            continue
    return total


def rss_mb(pgids: Iterable[int]) -> float:
    """Resident memory of the groups' live processes, in MB."""
    total = 0
    for pid in _group_pids(pgids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def median(values: Iterable[float]) -> float:
    found = [v for v in values if v == v]  # drop NaN
    return statistics.median(found) if found else float("nan")


def wait_for(done: Callable[[], bool], timeout: float, what: str, nap: float = 0.2) -> float:
    """Poll ``done`` until true; the seconds it took. Raises TimeoutError naming ``what``."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(nap)
    return time.monotonic() - started
