"""The benchmark's one load generator and its meters (``kiln_dev.bench``).

A closed loop: ``concurrency`` threads each send the next request as soon as their last
one was answered, so every target (Kiln, its floor, the Celery peer) sees the same client.
CPU seconds and RSS are read from ``/proc`` for whole process groups (each part of a
stack runs in a session of its own), so a gunicorn arbiter's workers or a JVM's threads
are all counted.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

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


@contextlib.contextmanager
def job_poster(url: str, token: str, concurrency: int,
               label: str) -> Iterator[Callable[[int], None]]:
    """``send(i)`` for :func:`closed_loop`: one ``POST /v1/jobs`` (an image, prompt
    ``"{label} {i}"``) to the ingress at ``url`` as ``token``'s user, on a client with a
    connection per concurrent caller. Raises unless the job was accepted (202)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, timeout=60, limits=limits,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        def post(i: int) -> None:
            response = client.post("/v1/jobs", json={"kind": "image", "prompt": f"{label} {i}"})
            if response.status_code != 202:
                raise RuntimeError(f"{label}: {response.status_code} {response.text}")
        yield post


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
