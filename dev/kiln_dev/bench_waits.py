"""``python -m kiln_dev.bench_waits``: what waiting on a remote task costs.

On the local stack (Cloud Tasks emulator for scheduled checks, a task server stand-in
that sends signed callbacks), with the worker function capped at ``--slots`` concurrent
invocations (one process, that many threads):

1. One long remote task (``--long-seconds``, 600 by default): the worker-seconds billed
   to it — the sum of its deliveries' durations from the worker's own ``delivery done``
   log lines — against the previous design, which held one invocation (polling with
   ``time.sleep``) for the whole task plus one invocation per 480 s hand-off.
2. ``--jobs`` concurrent remote jobs of ``--job-seconds`` each, submitted as fast as the
   ingress takes them: when the last one completes, relative to the last submission, and
   each job's completion lag (completed, as a snapshot listener sees it, minus the
   earliest it could complete: accepted + the task's duration), p50/p95.
3. Callback → ``completed`` seen by the listener, p50/p95 (from the stand-in's send time
   of each terminal callback).

Prints numbers; asserts nothing. The last line sums it up:
``waits: worker-seconds per 10-min task N (was M); 200 x 60 s jobs with 4 slots done in
T s; callback to completed p50 L ms``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import Job
from kiln_dev.bench_load import percentile
from kiln_dev.chaos_tasks import SlowTaskServer
from kiln_dev.stack import LocalStack, StackConfig

SECRET = "whsec_" + "YmVuY2gtd2FpdHMtbG9jYWwtc2VjcmV0LW5vdC1hLXJlYWwtb25l"  # local stand-in only
UID = "bench-waits"
OLD_BUDGET = 480.0  # the previous design's invocation budget before a hand-off


class Watcher:
    """Snapshot listeners on a sample of the bench's jobs, one per job document as an app
    listens: when each was first seen ended. (The completion times of all jobs come from
    their ``completedAt``; one query listener over hundreds of busy documents lags the
    emulator by minutes and would measure the listener, not Kiln.)"""

    def __init__(self, stack: LocalStack) -> None:
        self.completed: dict[str, float] = {}
        self.statuses: dict[str, str] = {}
        self.changed = threading.Condition()
        self._jobs = stack.services().firestore.collection("jobs")
        self._watches: list[Any] = []

    def listen(self, job_id: str) -> None:
        self._watches.append(self._jobs.document(job_id).on_snapshot(self._on_snapshot))

    def _on_snapshot(self, docs: list[Any], _changes: Any, _read_time: Any) -> None:
        now = time.time()
        with self.changed:
            for doc in docs:
                status = (doc.to_dict() or {}).get("status", "")
                self.statuses[doc.id] = status
                if status in ("completed", "failed", "canceled"):
                    self.completed.setdefault(doc.id, now)
            self.changed.notify_all()

    def stop(self) -> None:
        for watch in self._watches:
            watch.unsubscribe()


def wait_ended(stack: LocalStack, job_ids: list[str], timeout: float) -> dict[str, Job]:
    """Every job once all have ended (or at the timeout), read back whole."""
    store = stack.services().store
    deadline = time.monotonic() + timeout
    left = set(job_ids)
    while left and time.monotonic() < deadline:
        for job_id in sorted(left):
            job = store.get(job_id)
            if job is not None and job.status.terminal:
                left.discard(job_id)
        time.sleep(1.0)
    return {job_id: job for job_id in job_ids if (job := store.get(job_id)) is not None}


def submit(client: httpx.Client, prompt: str) -> tuple[str, float]:
    response = client.post("/v1/jobs", json={"kind": "model", "prompt": prompt})
    if response.status_code != 202:
        raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
    return str(response.json()["jobId"]), time.time()


def worker_seconds(stack: LocalStack) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """Per job: the sum of its deliveries' seconds, their count, and the last one's."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    last: dict[str, float] = {}
    for line in stack.worker_log_lines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") != "delivery done" or "jobId" not in entry:
            continue
        seconds = float(entry.get("seconds") or 0.0)
        total[entry["jobId"]] += seconds
        count[entry["jobId"]] += 1
        if entry.get("outcome") == "completed":
            last[entry["jobId"]] = seconds
    return total, count, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-seconds", type=float, default=600.0)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--poll-first", type=float, default=5.0)
    parser.add_argument("--poll-max", type=float, default=30.0)
    parser.add_argument("--listen", type=int, default=20,
                        help="jobs watched by a snapshot listener each (callback → seen)")
    parser.add_argument("--no-callbacks", action="store_true",
                        help="polling only (the fallback when callbacks stop arriving)")
    args = parser.parse_args(argv)

    tasks = SlowTaskServer(seconds=args.job_seconds,
                           callback_secret="" if args.no_callbacks else SECRET)
    env = {
        "KILN_MODEL_PROVIDER": "taskserver",
        "KILN_POLL_FIRST_SECONDS": str(args.poll_first),
        "KILN_POLL_MAX_SECONDS": str(args.poll_max),
        "KILN_JOB_MAX_AGE_SECONDS": str(max(3600.0, args.long_seconds * 2)),
        "KILN_PENDING_REPUBLISH_SECONDS": "60",
        "KILN_LOG_LEVEL": "INFO",
    }
    if not args.no_callbacks:
        env["KILN_TASKSERVER_WEBHOOK_SECRET"] = SECRET
    stack = LocalStack(StackConfig(env=env, worker_threads=args.slots, worker_processes=1,
                                   sweep_interval=5.0, companions=[tasks]))
    print(f"bench-waits: {args.jobs} x {args.job_seconds:g} s remote jobs and one "
          f"{args.long_seconds:g} s task; worker capped at {args.slots} concurrent invocations; "
          f"callbacks {'off' if args.no_callbacks else 'on'}", flush=True)
    with stack:
        watcher = Watcher(stack)
        token = emulator_id_token(UID, stack.config.project)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        with httpx.Client(base_url=stack.ingress_url, timeout=30, limits=limits,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            long_id, _ = submit(client, f"a long cathedral [task:{args.long_seconds:g}]")
            watcher.listen(long_id)
            with ThreadPoolExecutor(8) as pool:
                accepted = list(pool.map(
                    lambda i: submit(client, f"a small pot {i} [task:{args.job_seconds:g}]"),
                    range(args.jobs)))
        last_submit = max(at for _job, at in accepted)
        short_ids = [job for job, _at in accepted]
        for job_id in short_ids[::max(1, len(short_ids) // args.listen)]:
            watcher.listen(job_id)
        print(f"  submitted {args.jobs} jobs in {last_submit - accepted[0][1]:.1f} s", flush=True)
        jobs = wait_ended(stack, short_ids, timeout=args.job_seconds + 600)
        ended = {j: job.completed_at.timestamp() for j, job in jobs.items()
                 if job.completed_at is not None}
        ok = sum(1 for job in jobs.values() if job.status.value == "completed")
        lags = [(ended[j] - (at + args.job_seconds)) * 1000 for j, at in accepted if j in ended]
        all_done = max(ended.values()) - last_submit if ended else float("nan")
        print(f"  {ok}/{args.jobs} completed; the last {all_done:.1f} s after the last "
              f"submission; completion lag (completedAt minus accepted + task) p50 "
              f"{percentile(lags, 50):.0f} ms, p95 {percentile(lags, 95):.0f} ms", flush=True)
        print(f"  waiting for the {args.long_seconds:g} s task …", flush=True)
        wait_ended(stack, [long_id], timeout=args.long_seconds + 600)
        watcher.stop()
        time.sleep(1.0)  # the worker's last log lines reach its file
        total, count, last = worker_seconds(stack)
        callbacks = tasks.callback_times()  # job id → when its terminal callback was sent
    long_total = total.get(long_id, 0.0)
    long_transfer = last.get(long_id, 0.0)
    was = args.long_seconds + args.long_seconds // OLD_BUDGET  # + a claim per hand-off
    per_job = [total[j] for j in short_ids if j in total]
    print(f"  long task: {count.get(long_id, 0)} deliveries, {long_total:.2f} worker-seconds "
          f"({long_total - long_transfer:.2f} s excluding the final delivery, which fetches "
          f"and stores the artifact); the previous design held ≈{was:.0f} s "
          f"(the whole task in sleeping invocations)")
    if per_job:
        print(f"  {args.jobs} x {args.job_seconds:g} s jobs: worker-seconds per job p50 "
              f"{percentile(per_job, 50):.2f}, p95 {percentile(per_job, 95):.2f} "
              f"(previously ≈{args.job_seconds:.0f} each)")
    to_listener = [(watcher.completed[j] - sent) * 1000 for j, sent in callbacks.items()
                   if j in watcher.completed and watcher.statuses.get(j) == "completed"]
    cb = f"p50 {percentile(to_listener, 50):.0f} ms, p95 {percentile(to_listener, 95):.0f} ms" \
        if to_listener else "n/a (callbacks off)"
    print(f"  callback → completed seen by a listener: {cb} over {len(to_listener)} jobs "
          f"(the short jobs' callbacks come in one burst: a backlog on {args.slots} slots)")
    if long_id in callbacks and long_id in watcher.completed:
        alone = (watcher.completed[long_id] - callbacks[long_id]) * 1000
        print(f"  callback → completed for the {args.long_seconds:g} s task, alone on the "
              f"stack by then: {alone:.0f} ms")
    p50 = f"{percentile(to_listener, 50):.0f}" if to_listener else "n/a"
    print(f"waits: worker-seconds per {args.long_seconds / 60:g}-min task "
          f"{long_total - long_transfer:.1f} (was {was:.0f}); {args.jobs} x "
          f"{args.job_seconds:g} s jobs with {args.slots} slots done in {all_done:.0f} s; "
          f"callback to completed p50 {p50} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
