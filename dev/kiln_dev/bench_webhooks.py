"""``python -m kiln_dev.bench_webhooks``: signed webhooks delivered through bad receivers.

On the local stack, a backend (an API key) registers three endpoints over the HTTP API —
one healthy, one that fails half its requests (500 to the first try of each event, so
each event takes two; a receiver failing at random would now and then need a sixth
attempt, 9 minutes in at this scale), one that is down (503) for its first ``--down``
seconds (2 minutes) — and submits ``--jobs`` image jobs. Each job's
``job.completed`` event goes to all three. Retries follow the Standard Webhooks schedule
scaled by ``KILN_WEBHOOK_SCHEDULE_SCALE`` (``--scale``, 0.02: 5 s → 0.1 s, 5 min → 6 s,
30 min → 36 s, 2 h → 144 s), so the down receiver is reached on its fifth attempt, about
3 minutes in, and the whole run takes about 4 minutes with the stack's start.

Each receiver de-duplicates by ``webhook-id`` and verifies every signature. The bench
checks that every event reached every receiver exactly once after de-duplication and
none was lost, and prints the latency from the job's ``completedAt`` to the first
successful receipt (p50 over every (event, receiver) delivery, and per receiver). Last
line: ``webhooks: events N, received once N, lost 0, duplicates after dedupe 0, p50
delivery L ms`` (N counts distinct events).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import httpx

from kiln.runtime.keys import create_key
from kiln_dev.bench_load import percentile
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.webhook_receiver import Behavior, Received, WebhookReceiver

RECEIVERS = ("/healthy", "/flaky", "/down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--down", type=float, default=120.0, help="seconds /down answers 503")
    parser.add_argument("--scale", type=float, default=0.02, help="KILN_WEBHOOK_SCHEDULE_SCALE")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    env = {"KILN_WEBHOOK_SCHEDULE_SCALE": str(args.scale), "KILN_OFFLINE_IMAGE_SECONDS": "0.5",
           "KILN_LOG_LEVEL": "WARNING"}
    print(f"bench-webhooks: {args.jobs} jobs, 3 receivers (healthy; 500 to each event's first "
          f"try; down {args.down:.0f} s), retry schedule x{args.scale}", flush=True)
    with LocalStack(StackConfig(env=env)) as stack, WebhookReceiver() as receiver:
        services = stack.services()
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        key = create_key(services.keys, services.clock, tenant=tenant,
                         scopes=["submit", "read"]).secret
        started = time.time()
        with httpx.Client(base_url=stack.ingress_url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            for path in RECEIVERS:
                created = api.post("/v1/webhooks", json={"url": receiver.url(path)})
                created.raise_for_status()
                behavior = {"/flaky": Behavior(fail_first=True),
                            "/down": Behavior(down_until=started + args.down)}.get(path, Behavior())
                behavior.secret = created.json()["secret"]
                receiver.behave(path, behavior)
            job_ids = []
            for i in range(args.jobs):
                answer = api.post("/v1/jobs", json={"kind": "image", "prompt": f"bench {i}"})
                answer.raise_for_status()
                job_ids.append(answer.json()["jobId"])
        print(f"  submitted {len(job_ids)} jobs; waiting for every delivery…", flush=True)
        ok = wait_all(receiver, args.jobs, args.timeout)
        jobs = {job_id: services.store.get(job_id) for job_id in job_ids}
        report(receiver, jobs, services, ok)
    return 0


def first_successes(received: list[Received]) -> dict[tuple[str, str], Received]:
    """(receiver, webhook-id) → its first 2xx with a valid signature (de-duplication)."""
    seen: dict[tuple[str, str], Received] = {}
    for r in received:
        if 200 <= r.answered < 300 and r.verified:
            seen.setdefault((r.path, r.webhook_id), r)
    return seen


def wait_all(receiver: WebhookReceiver, jobs: int, timeout: float) -> bool:
    try:
        receiver.wait(lambda got: len(first_successes(got)) >= jobs * len(RECEIVERS), timeout)
        return True
    except AssertionError:
        return False


def report(receiver: WebhookReceiver, jobs: dict[str, Any], services: Any, ok: bool) -> None:
    received = list(receiver.received)
    firsts = first_successes(received)
    events: dict[str, str] = {}  # webhook-id -> job id
    for (_path, webhook_id), r in firsts.items():
        events[webhook_id] = r.json()["data"]["jobId"]
    expected = {job_id for job_id, job in jobs.items() if job is not None and job.terminal}
    latencies: dict[str, list[float]] = {path: [] for path in RECEIVERS}
    for (path, _webhook_id), r in firsts.items():
        job = jobs.get(r.json()["data"]["jobId"])
        if job is not None and job.completed_at is not None:
            latencies[path].append((r.at - job.completed_at.timestamp()) * 1000)
    lost = 0
    for path in RECEIVERS:
        got = {events[w] for (p, w) in firsts if p == path}
        lost += len(expected - got)
        attempts = [r for r in received if r.path == path]
        unique = {r.webhook_id for r in attempts if 200 <= r.answered < 300}
        raw_dupes = sum(1 for r in attempts if 200 <= r.answered < 300) - len(unique)
        bad = sum(1 for r in attempts if r.verified is False)
        values = latencies[path]
        print(f"  {path:<9} requests {len(attempts):3d}, events received {len(got):3d}, "
              f"duplicates before dedupe {raw_dupes}, bad signatures {bad}, delivery p50 "
              f"{percentile(values, 50) if values else float('nan'):8.0f} ms p95 "
              f"{percentile(values, 95) if values else float('nan'):8.0f} ms")
    once = sum(1 for job_id in expected
               if all((p, w) in firsts for p in RECEIVERS for w, j in events.items() if j == job_id)
               and sum(1 for (p, w) in firsts if events[w] == job_id) == len(RECEIVERS))
    everything = [v for values in latencies.values() for v in values]
    if not ok:
        print(f"  timed out: {len(firsts)} of {len(expected) * len(RECEIVERS)} deliveries")
    p50 = percentile(everything, 50) if everything else float("nan")
    # After de-duplication by webhook-id a receiver processes each event once by construction.
    print(f"webhooks: events {len(expected)}, received once {once}, lost {lost}, "
          f"duplicates after dedupe 0, p50 delivery {p50:.0f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
