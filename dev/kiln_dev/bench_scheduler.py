"""``python -m kiln_dev.bench_scheduler``: scheduled checks through the local Cloud Tasks emulator.

On the local stack (its worker's push subscription removed, so nothing else consumes the
jobs topic), ``--checks`` checks due now are scheduled with ``CloudTasksScheduler`` from
``--concurrency`` threads, all at once or ``--rate`` per second, and a pull subscription
on the jobs topic receives them. Reports the schedule call (``create_task``) latency, the
dispatch latency (schedule call → message pulled from the subscription), p50/p95/max, the
rate the emulator published at (its ``/stats``) and the throughput (checks per second from
the first schedule to the last arrival). Prints numbers; asserts nothing. The
last line sums it up: ``scheduler: N checks, dispatch p50 X ms p95 Y ms, Z checks/s``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kiln.adapters.cloudtasks import CloudTasksScheduler
from kiln_dev.bench_load import percentile
from kiln_dev.stack import WORKER_SUBSCRIPTION, LocalStack, StackConfig


class Arrivals:
    """Pulls the jobs topic on a thread: when each job's check message arrived."""

    def __init__(self, stack: LocalStack, expected: int) -> None:
        settings = stack.settings()
        self.subscriber = stack.pubsub_subscriber()
        topic = f"projects/{settings.project}/topics/{settings.jobs_topic}"
        # Only this bench consumes the topic (the worker would compete for the 2 cores).
        self.subscriber.delete_subscription(
            subscription=self.subscriber.subscription_path(settings.project, WORKER_SUBSCRIPTION))
        self.path = self.subscriber.subscription_path(settings.project, "bench-scheduler")
        self.subscriber.create_subscription(name=self.path, topic=topic)
        self.expected = expected
        self.at: dict[str, float] = {}
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._pull, daemon=True, name="arrivals")
        self._thread.start()

    def _pull(self) -> None:
        while len(self.at) < self.expected:
            answer = self.subscriber.pull(subscription=self.path, max_messages=500, timeout=5)
            now = time.perf_counter()
            for received in answer.received_messages:
                self.at.setdefault(json.loads(received.message.data)["jobId"], now)
            if answer.received_messages:
                self.subscriber.acknowledge(subscription=self.path,
                                            ack_ids=[m.ack_id for m in answer.received_messages])
        self.done.set()

    def close(self) -> None:
        self.subscriber.transport.close()


def run(stack: LocalStack, checks: int, concurrency: int, timeout: float,
        rate: float = 0.0) -> dict[str, Any]:
    scheduler = CloudTasksScheduler.connect(stack.settings())
    arrivals = Arrivals(stack, checks)
    jobs = [uuid.uuid4().hex[:20] for _ in range(checks)]
    sent: dict[str, float] = {}
    calls: list[float] = []

    def schedule(item: tuple[int, str]) -> None:
        index, job_id = item
        if rate:  # paced: the i-th check is scheduled at first + i / rate
            time.sleep(max(0.0, first + index / rate - time.perf_counter()))
        started = time.perf_counter()
        sent[job_id] = started
        scheduler.schedule(job_id, 1, dt.datetime.now(dt.UTC))
        calls.append(time.perf_counter() - started)

    first = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(schedule, enumerate(jobs)))
    scheduled = time.perf_counter() - first
    deadline = first + timeout
    while stack.tasks_stats()["dispatched"] < checks and time.perf_counter() < deadline:
        time.sleep(0.05)  # the emulator's own count of publishes answered
    dispatched = time.perf_counter() - first
    arrivals.done.wait(max(0.0, deadline - time.perf_counter()))
    arrivals.close()
    latencies = [arrivals.at[j] - sent[j] for j in jobs if j in arrivals.at]
    last = max(arrivals.at.values(), default=first)
    return {
        "checks": checks, "arrived": len(latencies), "concurrency": concurrency, "rate": rate,
        "schedule_ms": {"p50": percentile(calls, 50) * 1e3, "p95": percentile(calls, 95) * 1e3},
        "dispatch_ms": {"p50": percentile(latencies, 50) * 1e3,
                        "p95": percentile(latencies, 95) * 1e3,
                        "max": max(latencies, default=0.0) * 1e3},
        "schedule_per_s": checks / scheduled if scheduled else 0.0,
        "throughput_per_s": len(latencies) / (last - first) if last > first else 0.0,
        "published_per_s": checks / dispatched,
        "emulator": stack.tasks_stats(),
    }


def rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 1) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench_scheduler",
                                     description=__doc__)
    parser.add_argument("--checks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="schedule this many checks per second (0: all at once)")
    args = parser.parse_args(argv)
    with LocalStack(StackConfig(sweep_interval=0)) as stack:
        result = run(stack, args.checks, args.concurrency, args.timeout, args.rate)
    print(json.dumps(rounded(result), indent=2))
    d = result["dispatch_ms"]
    print(f"scheduler: {result['arrived']}/{result['checks']} checks, dispatch p50 "
          f"{d['p50']:.0f} ms p95 {d['p95']:.0f} ms, {result['throughput_per_s']:.0f} checks/s")
    return 0 if result["arrived"] == result["checks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
