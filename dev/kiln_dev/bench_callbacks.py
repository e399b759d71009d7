"""``python -m kiln_dev.bench_callbacks``: what a provider callback costs the ingress.

On the local stack, ``POST /v1/providers/taskserver/events`` with Standard-Webhooks-signed
``task.ended`` events, each for a fresh task id that no job is linked to (the early
path: ``first_seen`` + ``job_for``, two Firestore transactions, no wake), then the same
events again (``duplicate``: one transaction), then progress events (``ignored``: no
Firestore at all). Latency p50/p95 from the sender's side, serial and with
``--concurrency`` senders.

Prints numbers; asserts nothing. The last line sums it up:
``callbacks: serial p50 A ms p95 B ms; 8 concurrent p50 C ms p95 D ms``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from standardwebhooks.webhooks import Webhook

from kiln_dev.bench_load import percentile
from kiln_dev.stack import LocalStack, StackConfig

SECRET = "whsec_" + "YmVuY2gtY2FsbGJhY2tzLWxvY2FsLXNlY3JldC1ub3QtcmVhbA=="  # local only
PATH = "/v1/providers/taskserver/events"


def signed(status: str, task_id: str, msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"type": "task.ended" if status == "succeeded" else "task.progress",
                       "task_id": task_id, "status": status}).encode()
    now = dt.datetime.now(dt.UTC)
    return body, {"Content-Type": "application/json", "webhook-id": msg_id,
                  "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": Webhook(SECRET).sign(msg_id, now, body)}


def run(client: httpx.Client, events: list[tuple[str, str, str]], concurrency: int,
        expect: str) -> list[float]:
    """Send ``events`` ((status, task id, message id)); each one's latency in ms."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(event: tuple[str, str, str]) -> None:
        body, headers = signed(*event)
        started = time.perf_counter()
        response = client.post(PATH, content=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or response.json().get("status") != expect:
            raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
        with lock:
            latencies.append(elapsed)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, events))
    return latencies


def fresh(n: int) -> list[tuple[str, str, str]]:
    return [("succeeded", f"bench-{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}")
            for _ in range(n)]


def line(name: str, values: list[float]) -> str:
    return (f"  {name:<34} p50 {percentile(values, 50):6.1f} ms  p95 "
            f"{percentile(values, 95):6.1f} ms  ({len(values)} requests)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    env = {"KILN_TASKSERVER_WEBHOOK_SECRET": SECRET, "KILN_LOG_LEVEL": "WARNING"}
    print(f"bench-callbacks: {args.requests} signed callbacks per run against the local "
          f"ingress, serial and {args.concurrency} concurrent", flush=True)
    with LocalStack(StackConfig(env=env)) as stack:
        limits = httpx.Limits(max_connections=args.concurrency,
                              max_keepalive_connections=args.concurrency)
        with httpx.Client(base_url=stack.ingress_url, timeout=30, limits=limits) as client:
            run(client, fresh(args.concurrency * 2), args.concurrency, "accepted")  # warm up
            serial_events = fresh(args.requests)
            serial = run(client, serial_events, 1, "accepted")
            concurrent = run(client, fresh(args.requests), args.concurrency, "accepted")
            duplicates = run(client, serial_events, 1, "duplicate")
            progress = run(client, [("running", f"bench-{uuid.uuid4().hex}", f"msg_{i}")
                                    for i in range(args.requests)], 1, "ignored")
    print(line("end, serial", serial))
    print(line(f"end, {args.concurrency} concurrent", concurrent))
    print(line("replay (duplicate), serial", duplicates))
    print(line("progress (ignored), serial", progress))
    print(f"callbacks: serial p50 {percentile(serial, 50):.1f} ms p95 "
          f"{percentile(serial, 95):.1f} ms; {args.concurrency} concurrent p50 "
          f"{percentile(concurrent, 50):.1f} ms p95 {percentile(concurrent, 95):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
