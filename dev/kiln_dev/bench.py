"""``python -m kiln_dev.bench`` (``make bench``): Kiln against its floor and a peer.

One interleaved run on this machine, one load generator (``kiln_dev.bench_load``):

- **kiln**: ``POST /v1/jobs`` on the local stack's ingress (the worker runs the jobs).
- **floor**: the same Firestore create (both job documents) and Pub/Sub publish, done
  directly from this process against the same emulators (the worker runs those too).
- **peer**: Flask under gunicorn + Redis + a Celery prefork worker (``kiln_dev.bench_peer``).

Each round measures every target at 1, 16 and 64 concurrent clients, in turn, and waits
until that target's worker has finished the jobs before the next (so CPU per job covers
accept and run, and no backlog leaks into the next target). Then sequential end-to-end
jobs (generation 0 s): POST → the result seen by a listener (Firestore snapshot / Redis
pub/sub), beside the push delivery's own floor (publish → the emulator's push arrives).
Medians over the rounds. Prints numbers; asserts nothing. ``--quick``: one short round.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import Job, JobStatus
from kiln_dev.bench_load import Run, closed_loop, cpu_seconds, job_poster, median, rss_mb, wait_for
from kiln_dev.stack import LocalStack, StackConfig

if TYPE_CHECKING:  # the peer's Celery and Redis are imported when the bench runs
    from kiln_dev.bench_peer import PeerStack

TARGETS = ("floor", "kiln", "peer")
LEVELS = (1, 16, 64)
#: Sequential end-to-end jobs run (not recorded) before the measured ones: the warm-up's
#: concurrent acknowledgements leave the one-at-a-time path cold (measured: the first
#: sequential jobs' publish → delivery 14–21 ms p50, the same jobs after the load 10–13).
E2E_WARMUP = 10
#: One-client requests per turn of each target (see main).
C1_SLICE = 50
#: Seconds waited after a target's last job is logged "completed": its notification and
#: the emulators' own work go on for another 0.1–0.3 s (measured, 100 ms samples after a
#: drain of 50 jobs: the Firestore emulator 1.1 cores, then 0.2, 0.1, then idle), as long
#: as a slice of one-client requests takes.
SETTLE = 0.5
_COMPLETED = re.compile(rb'"message": "job completed"')


@dataclass
class Result:
    run: Run
    cpu: dict[str, float]  # part → CPU seconds per 1,000 jobs

    @classmethod
    def merged(cls, parts: list[Result]) -> Result:
        """Several runs of the same size as one: their latencies together, their CPU per
        job averaged."""
        run = Run([ms for part in parts for ms in part.run.latencies],
                  sum(part.run.wall for part in parts))
        return cls(run, {name: sum(part.cpu[name] for part in parts) / len(parts)
                         for name in parts[0].cpu})


def completed_jobs(stack: LocalStack) -> int:
    """Jobs the stack's worker has completed since it started (its log's lines)."""
    return len(_COMPLETED.findall((stack.logs / "worker.log").read_bytes()))


@dataclass
class Bench:
    stack: LocalStack
    peer: PeerStack
    results: dict[tuple[str, int], list[Result]] = field(default_factory=lambda: defaultdict(list))
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        from kiln_dev import bench_e2e

        self.token = emulator_id_token("bench-ack", self.stack.config.project)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.floor = bench_e2e.Floor(self.stack)
        self._peer_base = self.peer.completed()

    def counted(self, target: str, send: Callable[[int], None]) -> Callable[[int], None]:
        """``send``, counting each request it made for ``target``."""
        lock = threading.Lock()

        def one(i: int) -> None:
            send(i)
            with lock:
                self.sent[target] += 1
        return one

    def parts(self, target: str) -> dict[str, list[int]]:
        procs = self.stack.procs
        if target == "peer":
            return {"ingress": self.peer.pgids("gunicorn"), "worker": self.peer.pgids("celery"),
                    "stack": self.peer.pgids()}
        stack = [p.pid for p in procs.values()]
        return {"ingress": [procs["ingress"].pid] if target == "kiln" else [],
                "worker": [procs["worker"].pid], "stack": stack,
                "storage": [procs["storage"].pid]}

    def done(self, target: str) -> int:
        if target == "peer":
            return self.peer.completed() - self._peer_base
        return completed_jobs(self.stack)

    def expected(self, target: str) -> int:
        return self.sent["peer"] if target == "peer" else self.sent["floor"] + self.sent["kiln"]

    def measure(self, target: str, concurrency: int, requests: int, *,
                record: bool = True, held: bool = True) -> Result:
        """One target at one level. ``held``: Kiln's worker takes no delivery while the
        acknowledgements are measured (on the cloud the functions never share a CPU; here
        they share two cores, and Kiln's worker spends ~65 ms of CPU per job), then it
        runs them all before the CPU is read; False: it runs them alongside."""
        url = self.peer.url if target == "peer" else self.stack.ingress_url
        parts = self.parts(target)
        sender = contextlib.nullcontext(self.floor.accept) if target == "floor" \
            else job_poster(url, self.token, concurrency, target)
        with sender as unmetered:
            send = self.counted(target, unmetered)
            before = {name: cpu_seconds(pgids) for name, pgids in parts.items()}
            sent_before = self.sent[target]
            relay = self.stack.relay if held and target != "peer" else None
            if relay is not None:
                relay.hold()
            try:
                run = closed_loop(send, requests, concurrency)
            finally:
                if relay is not None:
                    relay.release()
            jobs = self.sent[target] - sent_before
        wait_for(lambda: self.done(target) >= self.expected(target), 900, f"{target}'s worker")
        time.sleep(SETTLE)  # the jobs' last steps, counted as theirs, not the next target's
        cpu = {name: (cpu_seconds(pgids) - before[name]) / jobs * 1000
               for name, pgids in parts.items() if pgids}
        result = Result(run, cpu)
        if record:
            self.results[(target, concurrency if held else -concurrency)].append(result)
        return result


def in_turn(n: int) -> tuple[str, ...]:
    """The targets in the order of turn ``n``: over any three turns in a row each takes
    each place once, so whatever one target leaves behind for the next (the emulators'
    work after a drain, see SETTLE) falls on each of them alike, where a fixed order put
    Kiln after the floor's jobs every time and the floor after the peer's light ones."""
    k = n % len(TARGETS)
    return TARGETS[k:] + TARGETS[:k]


def _row(label: str, values: dict[str, str]) -> str:
    return f"  {label:<34}" + "".join(f"{values.get(t, '—'):>16}" for t in TARGETS)


def report(bench: Bench, e2e: dict[str, list[float]], push_floor: list[float],
           rss: dict[str, float], cold: dict[str, float],
           gaps: dict[str, list[float]] | None = None,
           floor_cpu: float | None = None,
           later: tuple[dict[str, list[float]], dict[str, list[float]]] | None = None,
           peer_redis_hold_ms: float = 0.0) -> list[str]:
    """The table; ``e2e``, ``push_floor`` and ``gaps`` from the sequential jobs run before
    the load rounds, ``later`` (e2e, gaps) from the same jobs run again after them;
    ``peer_redis_hold_ms``: how long a proxy held each of Redis's answers to the peer."""
    res = bench.results
    after = median(later[0]["kiln-gen"]) * 1000 if later and later[0].get("kiln-gen") else None

    def med(target: str, level: int, pick: Callable[[Result], float]) -> float:
        return median(pick(r) for r in res.get((target, level), []))

    lines = ["", _row("measure (median of rounds)", {t: t for t in TARGETS})]
    for level in LEVELS:
        lines.append(_row(f"ack p50 / p99 ms, {level} client(s)", {
            t: f"{med(t, level, lambda r: r.run.p50):.1f} / {med(t, level, lambda r: r.run.p99):.1f}"
            for t in TARGETS}))
        lines.append(_row(f"  throughput req/s, {level}", {
            t: f"{med(t, level, lambda r: r.run.throughput):.0f}" for t in TARGETS}))
        if any(res.get((t, -level)) for t in TARGETS):
            lines.append(_row(f"  …with Kiln's worker alongside, {level}", {
                t: f"{med(t, -level, lambda r: r.run.p50):.1f} / {med(t, -level, lambda r: r.run.p99):.1f}"
                for t in TARGETS if res.get((t, -level))}))
    for part in ("ingress", "worker", "stack", "storage"):
        lines.append(_row(f"CPU s per 1,000 jobs: {part}", {
            t: f"{median(r.cpu[part] for lv in LEVELS for r in res.get((t, lv), []) if part in r.cpu):.2f}"
            for t in TARGETS if any(part in r.cpu for lv in LEVELS for r in res.get((t, lv), []))}))
    # The ingress's CPU by level: what a request costs beyond its share of work done
    # once for many (gRPC's and gunicorn's wake-ups are shared by concurrent requests).
    lines.append(_row("  …ingress at 1/16/64 clients", {
        t: "/".join(f"{med(t, lv, lambda r: r.cpu['ingress']):.2f}" for lv in LEVELS)
        for t in ("kiln", "peer") if all(res.get((t, lv)) for lv in LEVELS)}))
    if floor_cpu is not None:
        peer = median(r.cpu["ingress"] for lv in LEVELS for r in res.get(("peer", lv), []))
        lines.append(f"  floor's two SDK calls alone, client CPU per 1,000 jobs: {floor_cpu:.2f} s "
                     f"({floor_cpu / peer:.2f}× the peer's whole ingress)")
    storage = [r.cpu["storage"] for lv in LEVELS for r in res.get(("kiln", lv), [])
               if "storage" in r.cpu]
    if storage:
        lines.append("  Storage emulator CPU per 1,000 jobs, run by run: "
                     + " ".join(f"{s:.1f}" for s in storage) + " s")
    lines.append(_row("e2e overhead p50 / p95 ms", {
        t: f"{median(v) * 1000:.0f} / {sorted(v)[int(0.95 * (len(v) - 1))] * 1000:.0f}"
        for t, v in e2e.items() if v}))
    if e2e.get("kiln-gen"):
        lines.append(f"  Kiln e2e without the generator's own time (timeline: generated − "
                     f"submitted) p50 {median(e2e['kiln-gen']) * 1000:.0f} ms")
    for gap, values in (gaps or {}).items():
        if values:
            lines.append(f"    {gap:<24} p50 {median(values):7.1f} ms")
    if later and after is not None:
        delivered = later[1].get("published → delivered") or [float("nan")]
        lines.append(f"  …the same after the load rounds (the emulators hold every job by then): "
                     f"p50 {after:.0f} ms, published → delivered {median(delivered):.1f} ms")
    if push_floor:
        lines.append(f"  push delivery floor (publish → push received at a bare endpoint) p50 "
                     f"{median(push_floor) * 1000:.0f} ms")
    lines.append(_row("RSS MB (ingress+worker / stack)", {
        t: f"{rss.get(t + ':fn', 0):.0f} / {rss.get(t, 0):.0f}" for t in ("kiln", "peer")}))
    for name, seconds in cold.items():
        lines.append(f"  cold start, {name}: {seconds * 1000:.0f} ms")
    if peer_redis_hold_ms > 0:
        lines.append(f"  the peer's ingress and worker reached Redis through a proxy that held "
                     f"each answer {peer_redis_hold_ms:g} ms (--peer-redis-hold-ms)")
    ratio_p50 = med("kiln", 1, lambda r: r.run.p50) / med("floor", 1, lambda r: r.run.p50)
    ratio_p99 = med("kiln", 64, lambda r: r.run.p99) / med("floor", 64, lambda r: r.run.p99)
    kiln_cpu = median(r.cpu["ingress"] for lv in LEVELS for r in res.get(("kiln", lv), []))
    peer_cpu = median(r.cpu["ingress"] for lv in LEVELS for r in res.get(("peer", lv), []))
    lines.append("")
    lines.append(f"bench: ack p50 {ratio_p50:.2f}× floor, c64 p99 {ratio_p99:.2f}× floor, "
                 f"ingress cpu/job {kiln_cpu / peer_cpu:.2f}× peer, "
                 f"e2e p50 {median(e2e.get('kiln-gen') or e2e.get('kiln', [])) * 1000:.0f} ms"
                 + (f" ({after:.0f} ms after the load)" if after is not None else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round (1–2 minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="per target and level")
    parser.add_argument("--jobs", type=int, default=20, help="sequential end-to-end jobs")
    parser.add_argument("--worker-concurrency", type=int, default=8,
                        help="pushes the worker takes at once (the stack's push relay; 0: the "
                             "Pub/Sub emulator's own push, at most 2)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="requests per target before the first round (not recorded)")
    parser.add_argument("--warm-emulators", type=int, default=5000, metavar="N",
                        help="commits and publishes that warm the emulators first (0: none)")
    parser.add_argument("--threads", type=int, default=16,
                        help="gunicorn threads of both ingresses (16: measured best at 64 clients)")
    parser.add_argument("--peer-redis-hold-ms", type=float, default=0.0, metavar="MS",
                        help="hold each of Redis's answers to the peer's ingress and worker "
                             "this long (a proxy), as Kiln's emulators take milliseconds to "
                             "answer (0: the peer on its local Redis, as the issue defines it)")
    args = parser.parse_args(argv)
    from kiln_dev import bench_e2e
    from kiln_dev.bench_peer import PeerStack

    if args.quick:
        args.rounds, args.requests, args.jobs = 1, 128, 10
    env = {"KILN_OFFLINE_IMAGE_SECONDS": "0", "KILN_OFFLINE_MODEL_SECONDS": "0"}
    print(f"starting the local stack and the peer… ({time.strftime('%H:%M:%S')})", flush=True)
    cold: dict[str, float] = {}
    config = StackConfig(env=env, sweep_interval=0, ingress_threads=args.threads,
                         push_relay=args.worker_concurrency)
    with LocalStack(config) as stack, \
            PeerStack(threads=args.threads, redis_hold_ms=args.peer_redis_hold_ms) as peer:
        bench = Bench(stack, peer)
        # The Java emulators take thousands of calls to reach their speed (a fresh stack's
        # ingress: 4–6 ms per sequential request for its first ~2,500, then 2.5–2.8 ms);
        # the cloud's services are never cold that way. Warm them first, then every target.
        if args.warm_emulators:
            seconds = bench_e2e.warm_emulators(stack, args.warm_emulators)
            print(f"emulators warmed: {args.warm_emulators} commits and publishes in "
                  f"{seconds:.1f} s ({time.strftime('%H:%M:%S')})", flush=True)
        # Warm every target (the emulators' JITs, connections, caches) before measuring:
        # not recorded, so the first round measures the same thing as the others.
        for target in TARGETS:
            bench.measure(target, 4, args.warmup, record=False)
        print(f"warmed up: {args.warmup} requests per target ({time.strftime('%H:%M:%S')})",
              flush=True)
        # A fresh ingress process against warm emulators, as on the cloud (a cold
        # emulator's first count query alone takes ~0.8 s); the median of three.
        cold["ingress (process start → first 202)"] = median(
            bench_e2e.cold_start(stack) for _ in range(3))
        bench.sent["kiln"] += 3  # the cold starts' jobs
        # Sequential end to end on warm emulators, before the load rounds fill them (the
        # Firestore emulator slows as its data grows; the cloud's does not); again at the end.
        # Its own path warmed first (a listener per job, one delivery at a time): not recorded.
        bench_e2e.sequential(stack, peer, bench.headers, E2E_WARMUP, floor=False)
        e2e, push_floor, gaps = bench_e2e.sequential(stack, peer, bench.headers, args.jobs)
        bench.sent["kiln"] += E2E_WARMUP + args.jobs  # the workers' completions count them
        bench.sent["peer"] += E2E_WARMUP + args.jobs

        def show(round_no: int, level: int, target: str, held: bool, result: Result) -> None:
            print(f"round {round_no + 1} c{level:<3} {target:<6} "
                  f"{'' if held else 'live '}p50 {result.run.p50:6.1f} "
                  f"p99 {result.run.p99:6.1f} ms  {result.run.throughput:5.0f}/s  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in result.cpu.items()), flush=True)

        turn = 0  # the one-client slices' order, turn after turn
        for round_no in range(args.rounds):
            for level_no, level in enumerate(LEVELS):
                if level == 1:
                    # The targets take turns in slices of C1_SLICE requests, so the ratio
                    # of their one-client latencies compares the same moments of a noisy
                    # machine; each target's slices are then one result of the round.
                    requests = max(C1_SLICE, args.requests // 2)
                    slices: dict[str, list[Result]] = defaultdict(list)
                    for _ in range(max(1, requests // C1_SLICE)):
                        for target in in_turn(turn):
                            slices[target].append(bench.measure(target, 1, C1_SLICE,
                                                                record=False))
                        turn += 1
                    for target in TARGETS:
                        result = Result.merged(slices[target])
                        bench.results[(target, 1)].append(result)
                        show(round_no, 1, target, True, result)
                    for target in in_turn(round_no):
                        show(round_no, 1, target, False,
                             bench.measure(target, 1, requests, held=False))
                    continue
                for target in in_turn(round_no + level_no):
                    show(round_no, level, target, True,
                         bench.measure(target, level, args.requests))
        floor_cpu = bench.floor.cpu_per_job(200) * 1000
        bench.sent["floor"] += 200
        wait_for(lambda: bench.done("floor") >= bench.expected("floor"), 900, "floor's worker")
        later = bench_e2e.sequential(stack, peer, bench.headers, args.jobs, floor=False)
        rss = {"kiln": rss_mb(bench.parts("kiln")["stack"]),
               "kiln:fn": rss_mb([stack.procs["ingress"].pid, stack.procs["worker"].pid]),
               "peer": rss_mb(peer.pgids()), "peer:fn": rss_mb(peer.pgids("gunicorn", "celery"))}
        print("\n".join(report(bench, e2e, push_floor, rss, cold, gaps, floor_cpu,
                                (later[0], later[2]), args.peer_redis_hold_ms)), flush=True)
    return 0


def completed(services: Any, job_id: str, timeout: float = 60) -> None:
    """Block until ``job_id``'s document says completed (a snapshot listener, as an app)."""
    done = threading.Event()

    def on_snapshot(docs: list[Any], _c: Any, _t: Any) -> None:
        if any(d.exists and Job.from_docs(d.id, d.to_dict() or {}).status
               is JobStatus.COMPLETED for d in docs):
            done.set()

    watch = services.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
    try:
        if not done.wait(timeout):
            raise RuntimeError(f"job {job_id} did not complete by {dt.datetime.now():%H:%M:%S}: "
                               f"{where(services, job_id)}")
    finally:
        watch.unsubscribe()


def where(services: Any, job_id: str) -> str:
    """Where a job that did not complete stands, read once (a listener may be the one
    that missed it): its status, stage, why it waits and its timeline's last step."""
    job = services.store.get(job_id)
    if job is None:
        return "no such job"
    steps = sorted((job.server.timeline or {}).items(), key=lambda step: step[1])
    last = f"{steps[-1][0]} at {steps[-1][1]:%H:%M:%S.%f}"[:-3] if steps else "none"
    return (f"status {job.status.value}, stage {job.stage}, queueReason {job.queue_reason}, "
            f"attempts {job.attempts}, last step {last}")


if __name__ == "__main__":
    raise SystemExit(main())
