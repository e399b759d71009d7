"""``python -m kiln_dev.bench``: Kiln's budgets, measured on the local stack.

1. Webhook acknowledgement: ``POST /v1/jobs`` latency (p50/p95/p99) at 64 concurrent
   clients, while the worker processes the accepted jobs (as in production).
2. Orchestration overhead: end-to-end time of jobs whose generation takes 0 s
   (so all that remains is Kiln: publish, push, claim, upload, complete, notify).
3. Firestore writes per job document, from the worker's own structured logs.

Prints numbers; asserts nothing (budgets are judged by people, not by flaky timers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import Job, JobStatus
from kiln_dev.stack import LocalStack, StackConfig


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ack_latency(stack: LocalStack, requests: int, concurrency: int) -> list[float]:
    token = emulator_id_token("bench-ack", stack.config.project)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    lock = threading.Lock()
    with httpx.Client(base_url=stack.ingress_url, timeout=30, limits=limits,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        client.get("/healthz")

        def one(i: int) -> None:
            started = time.perf_counter()
            response = client.post("/v1/jobs", json={"kind": "image", "prompt": f"bench {i}"})
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 202:
                raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
            with lock:
                latencies.append(elapsed)

        # Warm up every connection and thread first.
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency)))
        latencies.clear()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
    return latencies


def overhead(stack: LocalStack, services: Any, jobs: int) -> list[float]:
    """Seconds from POST to a completed document seen by a listener, generation = 0 s."""
    token = emulator_id_token("bench-e2e", stack.config.project)
    out = []
    with httpx.Client(base_url=stack.ingress_url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(jobs):
            done = threading.Event()
            started = time.perf_counter()
            job_id = client.post("/v1/jobs", json={"kind": "image", "prompt": f"o {i}"}).json()[
                "jobId"]

            def on_snapshot(docs: list[Any], _c: Any, _t: Any, done: threading.Event = done) -> None:
                if any(d.exists and Job.from_docs(d.id, d.to_dict() or {}).status
                       is JobStatus.COMPLETED for d in docs):
                    done.set()

            watch = services.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
            if not done.wait(60):
                raise RuntimeError(f"job {job_id} did not complete")
            out.append(time.perf_counter() - started)
            watch.unsubscribe()
    return out


def writes_per_job(stack: LocalStack) -> list[int]:
    """create + claim + progress writes + complete + notification record, per job."""
    counts = []
    for line in (stack.logs / "worker.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == "job completed":
            counts.append(1 + 1 + int(entry.get("progressWrites", 0)) + 1 + 1)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args(argv)
    env = {"KILN_OFFLINE_IMAGE_SECONDS": "0", "KILN_OFFLINE_MODEL_SECONDS": "0"}
    print("starting the local stack…", flush=True)
    with LocalStack(StackConfig(env=env, sweep_interval=0)) as stack:
        services = stack.services()
        lat = ack_latency(stack, args.requests, args.concurrency)
        print(f"\nPOST /v1/jobs acknowledgement, {args.requests} requests at "
              f"{args.concurrency} concurrent (worker busy with the accepted jobs):")
        print(f"  p50 {percentile(lat, 50):6.1f} ms   p95 {percentile(lat, 95):6.1f} ms   "
              f"p99 {percentile(lat, 99):6.1f} ms   max {max(lat):6.1f} ms   "
              f"throughput ≈ {args.requests / (sum(lat) / 1000 / args.concurrency):.0f}/s")
        # Let the worker drain the acknowledged jobs before timing single jobs.
        _drain(services, timeout=300)
        e2e = overhead(stack, services, args.jobs)
        print(f"\nOrchestration overhead (generation 0 s), {args.jobs} sequential image jobs,")
        print("POST → completed seen by a snapshot listener:")
        print(f"  p50 {percentile(e2e, 50) * 1000:6.0f} ms   p95 {percentile(e2e, 95) * 1000:6.0f} ms"
              f"   mean {statistics.mean(e2e) * 1000:6.0f} ms")
        counts = writes_per_job(stack)
        if counts:
            print(f"\nFirestore writes per job document (0 s jobs): min {min(counts)}  "
                  f"median {statistics.median(counts)}  max {max(counts)}")
    return 0


def _drain(services: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sum(len(services.store.find(status=status.value, limit=1000))
                   for status in (JobStatus.PENDING, JobStatus.PROCESSING))
        if busy == 0:
            return
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
