"""The chaos suite: many jobs through the real local stack while things break.

    python -m kiln_dev.chaos --jobs 100 [--seed 7] [--faults duplicates,kills,...] [--json out.json]

Starts its own local stack (two gunicorn worker processes, fault proxies in front of
Storage and Pub/Sub, a slow remote-task server for 3D models whose jobs wait on scheduled
checks and callbacks, a 4 s worker budget), registers users with several devices each (some
UNREGISTERED, some answering UNAVAILABLE / INTERNAL), submits N jobs through the HTTP
API and, while they run, injects (``--faults``, all by default):

- ``duplicates``: re-publish accepted job ids at random moments, and every id once
  more after the drain;
- ``kills``: SIGKILL a worker process mid-job (gunicorn starts another), and now and
  then the whole worker function (restarted on the same port);
- ``provider``: prompts that fail permanently, fail retryably, or hang (the offline
  provider's ``[fail:permanent]`` / ``[fail:retryable]`` / ``[hang]``; a hung generation
  is released at the worker budget and fails ``provider_timeout`` when out of attempts);
- ``storage``: 503s, connection resets before and after forwarding for a fraction of
  Storage requests, and short Storage outages;
- ``fcm``: device tokens FCM answers UNREGISTERED, UNAVAILABLE or INTERNAL;
- ``publish``: Pub/Sub unreachable from the ingress for a few seconds (the sweeper must
  re-publish what was accepted meanwhile);
- ``restart``: restart the Pub/Sub emulator (topics and subscriptions are recreated;
  undelivered messages are lost) and the Storage emulator. The Firestore emulator is
  never restarted: it keeps everything in memory, so a restart deletes every job —
  a loss of the source of truth that no cloud Firestore outage causes;
- ``cancel``: owners cancel some jobs at random moments;
- ``callbacks``: the task server posts signed end callbacks, and misbehaves
  (``kiln_dev.standins.callbacks.CallbackFaults``): some are dropped, duplicated, late,
  forged, sent before the task ended or preceded by progress events;
- ``checks``: the Cloud Tasks emulator loses a fifth of the scheduled checks of waiting
  model jobs (the sweeper must send another when one is overdue).

Then it waits for every job to end (``--drain-timeout``), checks the promises
(``kiln_dev.chaos_report``), prints a table and exits 1 if any job was lost, any push or
artifact duplicated, or any failure has no code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import Job, JobStatus
from kiln_dev.chaos_report import Report, check
from kiln_dev.chaos_tasks import SlowTaskServer
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.callbacks import CallbackFaults

FAULTS = ("duplicates", "kills", "provider", "storage", "fcm", "publish", "restart", "cancel",
          "callbacks", "checks")
CALLBACK_SECRET = "whsec_" + "Y2hhb3MtY2FsbGJhY2tzLWxvY2FsLXNlY3JldC1ub3QtcmVhbA=="  # local only


@dataclass
class ChaosConfig:
    jobs: int = 100
    seed: int = 1
    faults: tuple[str, ...] = FAULTS
    submit_rate: float = 2.0  # jobs per second (what the Pub/Sub emulator's push loop can carry)
    drain_timeout: float = 420.0
    max_age: float = 300.0  # a job's maximum age (a backlog older than this fails)
    worker_processes: int = 2
    worker_threads: int = 8
    fault_interval: float = 3.0  # mean seconds between fault events
    model_share: float = 0.25
    env: dict[str, str] = field(default_factory=dict)


def stack_env(config: ChaosConfig) -> dict[str, str]:
    return {
        "KILN_OFFLINE_IMAGE_SECONDS": "0.5",
        "KILN_OFFLINE_MODEL_SECONDS": "1.0",
        "KILN_PROGRESS_INTERVAL_SECONDS": "0.5",
        "KILN_LEASE_SECONDS": "8",
        "KILN_RETRY_BACKOFF_SECONDS": "0.5",
        "KILN_PENDING_REPUBLISH_SECONDS": "5",
        "KILN_MAX_ATTEMPTS": "5",
        "KILN_WORKER_BUDGET_SECONDS": "4",
        "KILN_JOB_MAX_AGE_SECONDS": str(config.max_age),
        "KILN_MODEL_PROVIDER": "taskserver",
        "KILN_LOG_LEVEL": "INFO",
        **config.env,
    }


class Chaos:
    def __init__(self, config: ChaosConfig, out: Any = sys.stdout) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.out = out
        self.report = Report()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.healthy: dict[str, set[str]] = {}
        self.lock = threading.Lock()
        self.storm = threading.Event()  # set while faults are being injected
        self.planned = threading.Event()  # every enabled fault kind has struck once
        callbacks = self.has("callbacks")
        self.tasks = SlowTaskServer(
            seconds=2.0, callback_secret=CALLBACK_SECRET if callbacks else "",
            faults=CallbackFaults(drop=0.2, duplicate=0.2, jitter=1.0, forge=0.1, early=0.2,
                                  progress=1, reorder=0.3, seed=config.seed))
        env = stack_env(config)
        if callbacks:
            env["KILN_TASKSERVER_WEBHOOK_SECRET"] = CALLBACK_SECRET
        # A workdir of its own name: other tools tidy up kiln-stack-* directories.
        self.workdir = Path(tempfile.mkdtemp(prefix="kiln-chaos-"))
        self.stack = LocalStack(StackConfig(
            workdir=self.workdir,
            env=env, sweep_interval=1.0, worker_processes=config.worker_processes,
            worker_threads=config.worker_threads, fault_proxies=("storage", "pubsub"),
            proxy_seed=config.seed, companions=[self.tasks],
            tasks_drop_rate=0.2 if self.has("checks") else 0.0, tasks_seed=config.seed))

    def has(self, fault: str) -> bool:
        return fault in self.config.faults

    def say(self, text: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=self.out, flush=True)

    # --- the run --------------------------------------------------------------------

    def run(self) -> Report:
        t0 = time.monotonic()
        self.say(f"starting the stack; {self.config.jobs} jobs, seed {self.config.seed}, "
                 f"faults: {', '.join(self.config.faults) or 'none'}")
        with self.stack:
            self.services = self.stack.services()
            self.say(f"stack up; logs in {self.stack.logs}")
            self._register_users()
            self.storm.set()
            if self.has("storage"):
                proxy = self.stack.storage_proxy
                assert proxy is not None
                proxy.error_rate, proxy.reset_rate, proxy.reset_after_rate = 0.04, 0.02, 0.01
            injector = threading.Thread(target=self._inject, daemon=True, name="chaos-faults")
            injector.start()
            self._submit_all()
            self.say(f"submitted: {self.report.accepted} accepted, {self.report.rejected} rejected")
            time.sleep(min(15.0, 2 + self.config.jobs / 20))  # faults go on a little longer
            self.planned.wait(120)  # every fault kind struck at least once
            self.storm.clear()
            injector.join(timeout=60)
            if self.stack.storage_proxy is not None:
                self.stack.storage_proxy.calm()
            drain_start = time.monotonic()
            self._drain(drain_start + self.config.drain_timeout)
            self.report.drain_seconds = time.monotonic() - drain_start
            if self.has("duplicates"):
                self._duplicate_wave()
            self._settle()
            check(self.report, jobs=self.jobs, found=self._read_jobs(),
                  messages=list(self.stack.fcm.messages), blobs=self.services.blobs,
                  healthy_tokens=self.healthy, submissions=dict(self.tasks.submissions))
            for sent in self.tasks.callbacks.sent if self.tasks.callbacks is not None else []:
                self.report.faults[f"callback_{sent.kind}_{sent.status}"] += 1
            for key, n in self.stack.tasks_stats().items():
                self.report.faults[f"scheduled_checks_{key}"] += n
            if self.stack.storage_proxy is not None:
                for key, n in self.stack.storage_proxy.stats.items():
                    if key != "requests":
                        self.report.faults[f"storage_{key}"] += n
        self.report.total_seconds = time.monotonic() - t0
        if not os.environ.get("KILN_KEEP_STACK_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.report

    def _register_users(self) -> None:
        fcm = self.stack.fcm
        n_users = max(4, self.config.jobs // 5)
        self.users = [f"chaos-{self.config.seed}-{i}" for i in range(n_users)]
        for uid in self.users:
            devices = {"a": f"tok-{uid}-a", "b": f"tok-{uid}-b"}
            self.healthy[uid] = set(devices.values())
            if self.has("fcm"):
                roll = self.random.random()
                if roll < 0.15:
                    devices["dead"] = f"dead-{uid}"  # UNREGISTERED: the worker deletes it
                elif roll < 0.25:
                    # FCM's transient errors: two failures, then a success, over and over;
                    # firebase-admin retries them, so each push arrives after about 1 s.
                    devices["flaky"] = f"flaky-{uid}"
                    fcm.fail(devices["flaky"], self.random.choice(["UNAVAILABLE", "INTERNAL"]),
                             times=2, repeat=True)
            col = self.services.firestore.collection("users").document(uid).collection("devices")
            for device_id, address in devices.items():
                # Device "b" is an app not yet on FIDs: a legacy registration token.
                field = "token" if device_id == "b" else "fid"
                col.document(device_id).set({field: address, "platform": "android",
                                             "updatedAt": time.time()})

    def _job_spec(self, index: int) -> dict[str, Any]:
        rnd = self.random
        kind = "model" if rnd.random() < self.config.model_share else "image"
        prompt = f"chaos {index} a {rnd.choice(['red', 'teal', 'gold', 'navy'])} " \
                 f"{rnd.choice(['sphere', 'cube', 'torus', 'star', 'cone'])}"
        expect = "complete"
        roll = rnd.random()
        if self.has("provider"):
            if roll < 0.05:
                prompt, expect = prompt + " [fail:permanent]", "permanent"
            elif roll < 0.10:
                prompt, expect = prompt + " [fail:retryable]", "retryable"
            elif roll < 0.11 and kind == "image":
                prompt, expect = prompt + " [hang]", "hang"
        if kind == "model" and expect == "complete" and rnd.random() < 0.3:
            prompt += " [task:5]"  # a longer remote task: several scheduled checks
        if expect == "complete" and self.has("cancel") and rnd.random() < 0.05:
            expect = "cancel"
        return {"uid": rnd.choice(self.users), "kind": kind, "prompt": prompt, "expect": expect}

    def _submit_all(self) -> None:
        specs = [self._job_spec(i) for i in range(self.config.jobs)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = []
            start = time.monotonic()
            for i, spec in enumerate(specs):
                delay = start + i / self.config.submit_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(self._submit, spec))
            for future in futures:
                future.result()

    def _http(self, uid: str) -> httpx.Client:
        token = emulator_id_token(uid, self.stack.config.project)
        return httpx.Client(base_url=self.stack.ingress_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def _submit(self, spec: dict[str, Any]) -> None:
        with self._http(spec["uid"]) as http:
            try:
                response = http.post("/v1/jobs", json={"kind": spec["kind"],
                                                       "prompt": spec["prompt"]})
            except httpx.HTTPError:
                response = None
            if response is None or response.status_code != 202:
                with self.lock:
                    self.report.rejected += 1
                return
            job_id = response.json()["jobId"]
            with self.lock:
                self.jobs[job_id] = spec
                self.report.accepted += 1
            if spec["expect"] == "cancel":
                time.sleep(self.random.uniform(0.2, 3.0))
                answer = http.post(f"/v1/jobs/{job_id}:cancel")
                with self.lock:
                    self.report.faults[f"cancel_{answer.status_code}"] += 1

    # --- faults ---------------------------------------------------------------------

    def _inject(self) -> None:
        """Every enabled fault kind once (in a seeded order), then random ones, until the
        storm ends; planned emulator restarts that did not fit happen at the end."""
        kinds: list[Any] = []
        if self.has("duplicates"):
            kinds.append(self._duplicate)
        if self.has("kills"):
            kinds += [self._kill_process, self._restart_worker]
        if self.has("storage"):
            kinds.append(self._storage_outage)
        if self.has("publish"):
            kinds.append(self._publish_outage)
        restarts = [self._restart_pubsub, self._restart_storage] if self.has("restart") else []
        first = kinds + restarts
        self.random.shuffle(first)
        # Frequent kinds weigh more; a whole-worker restart or an outage is rarer.
        weights = {self._duplicate: 4, self._kill_process: 3}
        pool = [k for k in kinds for _ in range(weights.get(k, 1))]
        worker_restarts = 0
        while not self._sleep_storm(self.random.expovariate(1 / self.config.fault_interval)):
            if first:
                event = first.pop(0)
                if event in restarts:
                    restarts.remove(event)
            elif not self.planned.is_set():
                self.planned.set()
                continue
            elif pool:
                event = self.random.choice(pool)
            else:
                continue
            if event == self._restart_worker:
                if worker_restarts >= 3:
                    continue
                worker_restarts += 1
            try:
                event()
            except Exception as exc:  # a fault that fails to inject must not end the run
                self.say(f"fault {event.__name__} failed: {type(exc).__name__}: {exc}")
        for restart in restarts:
            restart()
        self.planned.set()

    def _sleep_storm(self, seconds: float) -> bool:
        """Sleep; True if the storm ended meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.storm.is_set():
                return True
            time.sleep(min(0.2, end - time.monotonic()) if end > time.monotonic() else 0)
        return not self.storm.is_set()

    def _note(self, fault: str, detail: str = "") -> None:
        with self.lock:
            self.report.faults[fault] += 1
        if detail:
            self.say(f"{fault}: {detail}")

    def _duplicate(self) -> None:
        with self.lock:
            ids = list(self.jobs)
        for job_id in self.random.sample(ids, min(len(ids), self.random.randint(1, 5))):
            for _ in range(self.random.randint(1, 3)):
                self.services.queue.publish(job_id, reason="chaos-duplicate")
                self._note("duplicate_deliveries")

    def _kill_process(self) -> None:
        pid = self.stack.kill_worker_process()
        if pid:
            self._note("worker_process_killed", f"SIGKILL worker process {pid}")

    def _restart_worker(self) -> None:
        self.stack.restart("worker", down_for=1.0)
        self._note("worker_function_restarted", "worker function killed and restarted")

    def _storage_outage(self) -> None:
        proxy = self.stack.storage_proxy
        assert proxy is not None
        proxy.down = True
        self._note("storage_outage", "Storage unreachable for 2 s")
        time.sleep(2.0)
        proxy.down = False

    def _publish_outage(self) -> None:
        proxy = self.stack.pubsub_proxy
        assert proxy is not None
        proxy.down()
        self._note("pubsub_outage_for_functions", "Pub/Sub unreachable from the functions for 3 s")
        time.sleep(3.0)
        proxy.up()

    def _restart_pubsub(self) -> None:
        self.stack.restart("pubsub")
        self._note("pubsub_emulator_restarted", "Pub/Sub emulator restarted; topology recreated")

    def _restart_storage(self) -> None:
        self.stack.restart("storage")
        self._note("storage_emulator_restarted", "Storage emulator restarted")

    # --- the end --------------------------------------------------------------------

    def _read_jobs(self) -> dict[str, Job]:
        """Every submitted job as the store reads it now (typed, with its server state)."""
        store = self.services.store
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = dict(zip(self.jobs, pool.map(store.get, list(self.jobs)), strict=True))
        return {job_id: job for job_id, job in found.items() if job is not None}

    def _open_jobs(self) -> Counter[str]:
        """Submitted jobs still pending or running, by status (one query per status)."""
        counts: Counter[str] = Counter()
        for status in (JobStatus.PENDING, JobStatus.PROCESSING):
            for job in self.services.store.find(status=status.value, limit=10_000):
                if job.id in self.jobs:
                    counts[status.value] += 1
        return counts

    def _drain(self, deadline: float) -> None:
        last = -1
        while True:
            counts = self._open_jobs()
            open_jobs = sum(counts.values())
            if not open_jobs or time.monotonic() > deadline:
                return
            if open_jobs != last:
                self.say(f"draining: {open_jobs} open ({dict(counts)})")
                last = open_jobs
            time.sleep(1.0)

    def _duplicate_wave(self) -> None:
        """Every job id once more: ended jobs must not run, upload or push again."""
        for job_id in self.jobs:
            self.services.queue.publish(job_id, reason="chaos-final-duplicate")
        self._note("duplicate_deliveries", f"final wave: {len(self.jobs)} re-published")
        self.report.faults["duplicate_deliveries"] += len(self.jobs) - 1

    def _settle(self, quiet: float = 4.0, limit: float = 60.0) -> None:
        """Wait until the FCM record stops growing (pushes follow the final write)."""
        end = time.monotonic() + limit
        count, since = -1, time.monotonic()
        while time.monotonic() < end:
            now = len(self.stack.fcm.messages)
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated subset of: {', '.join(FAULTS)} ('none' for none)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="submissions per second (the Pub/Sub emulator pushes ~4 at a time)")
    parser.add_argument("--max-age", type=float, default=300.0,
                        help="job maximum age in seconds (a backlog older than this fails)")
    parser.add_argument("--drain-timeout", type=float, default=420.0)
    parser.add_argument("--fault-interval", type=float, default=3.0,
                        help="mean seconds between fault events")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    faults = () if args.faults == "none" else tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    config = ChaosConfig(jobs=args.jobs, seed=args.seed, faults=faults, submit_rate=args.rate,
                         max_age=args.max_age, drain_timeout=args.drain_timeout,
                         fault_interval=args.fault_interval)
    report = Chaos(config).run()
    print(report.table(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
