"""``make bench-fairness``: the fair queue under a crowd (issue 14).

Part 1 (simulated, on the in-memory fakes with a fake clock): 2,000 jobs from 200 users
(20 on the paid plan, 5 heavy free users submitting 200 each) arrive at 20 jobs/s; the
provider account takes 8 tasks at once; each generation takes 4-12 s (seeded). Kiln's own
code decides everything: ``admit`` and ``accept_job`` at each arrival, the worker's
``run_job`` at each generation's end (which starts who is next), the sweeper every 60 s.
The emulators cannot take 2,000 jobs at this pace on two cores, hence the fakes; every
write to a counter shard, a place or a job document is timed, for the hottest document's
sustained rate (writes in its busiest 10 s, per second).

Part 2 (``--stack``, the default; ``--no-stack`` skips it): admission p99 at 50 jobs/s on
the local stack's Firestore emulator (``admit`` + ``accept_job``: the quota's tickets,
the waiting count, the places, the job's documents, the publish). The hottest document
is measured in part 1, where every write is seen.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.job import Job
from kiln.core.requests import parse_job_request
from kiln.runtime import dispatch
from kiln.runtime.accept import accept_job
from kiln.runtime.admission import admit
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import run_job
from kiln.settings import Settings
from kiln_dev.fakes import (
    FakeClock,
    InMemoryBlobs,
    InMemoryCounters,
    InMemoryDevices,
    InMemoryJobStore,
    InMemorySlots,
    RecordingPush,
    RecordingQueue,
    TokenVerifier,
    rotated,
)
from kiln_dev.fakes_api import InMemoryBatchStore

PLANS = "free:daily=250,running=2,priority=0;pro:daily=1000,running=4,priority=10"
CAPACITY = 8
REQUEST = parse_job_request({"kind": "image", "prompt": "a red cube"})


class Timed:
    """Records (document, time) for each write, to find the hottest document."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.writes: defaultdict[str, list[float]] = defaultdict(list)

    def note(self, doc: str) -> None:
        self.writes[doc].append(self.clock.monotonic())

    def hottest(self, window: float = 10.0) -> tuple[str, float]:
        best, name = 0, ""
        for doc, times in self.writes.items():
            recent: deque[float] = deque()
            for at in sorted(times):
                recent.append(at)
                while recent[0] <= at - window:
                    recent.popleft()
                if len(recent) > best:
                    best, name = len(recent), doc
        return name, best / window


class _Store(InMemoryJobStore):
    """The fake job store, with ``find`` that skips the copies (2,000 jobs, a pass at
    every job's end: the fake's copying would dominate the run). A rotated window is
    drawn as Firestore's is (``adapters.scan``), its pivot from a seeded generator (job
    ids are random, so which jobs a window holds still varies from run to run)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self._rng = random.Random(0)

    def find(self, *, status: str | None = None, uid: str | None = None,
             limit: int = 100, waiting: bool = False, rotate: bool = False) -> list[Job]:
        with self._lock:
            ids = [job_id for job_id, doc in self.docs.items()
                   if (status is None or doc.get("status") == status)
                   and (uid is None or doc.get("uid") == uid)
                   and (not waiting or doc.get("queueReason") is not None)]
            if rotate:
                ids = rotated(ids, limit, f"{self._rng.getrandbits(80):020x}")
            return [Job.from_docs(i, self.docs[i], self.servers[i]) for i in ids[:limit]]


class _Instant:
    """A generator that answers at once with one small real PNG (the simulation holds the
    job for its duration; the thumbnail is the provider's, so none is rendered)."""

    name = "sim"

    def __init__(self) -> None:
        import io

        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 60, 40)).save(out, "PNG")
        self.png = out.getvalue()

    def generate(self, request: Any, on_progress: Any, should_stop: Any) -> Any:
        from kiln.providers.base import Artifact

        return Artifact.from_bytes("image", self.png, thumbnail=self.png)


def simulate(seed: int = 14, jobs: int = 2000) -> dict[str, Any]:
    """Part 1 with ``jobs`` jobs (a tenth from each heavy user, half from everyone else)."""
    rng = random.Random(seed)
    clock = FakeClock()
    timed = Timed(clock)
    store, queue = _Store(clock), RecordingQueue()
    counters, slots = InMemoryCounters(store), InMemorySlots(clock.monotonic)
    _wrap(store, counters, slots, timed)
    settings = Settings(project="demo-bench", plans=PLANS, provider_capacity=str(CAPACITY),
                        image_provider="sim", queue_ttl_seconds=3600.0, max_waiting=5000,
                        pending_republish_seconds=60.0, job_max_age_seconds=7200.0)
    services = Services(settings, providers={"sim": lambda _s: _Instant()}, store=store,
                        queue=queue, counters=counters, slots=slots, clock=clock,
                        blobs=InMemoryBlobs(), push=RecordingPush(), devices=InMemoryDevices(),
                        auth=TokenVerifier(), channels={}, batches=InMemoryBatchStore(store))
    paid = {f"user{i:03d}" for i in range(20)}
    heavy = [f"user{i:03d}" for i in range(20, 25)]
    others = [f"user{i:03d}" for i in range(25, 200)] + sorted(paid)
    owners = [u for u in heavy for _ in range(jobs // 10)] + \
        [others[i % len(others)] for i in range(jobs - len(heavy) * (jobs // 10))]
    rng.shuffle(owners)
    events: list[tuple[float, int, str, str]] = []  # (at, order, what, who)
    for n, uid in enumerate(owners):
        heapq.heappush(events, (n / 20.0, n, "arrive", uid))
    accepted: dict[str, tuple[str, float]] = {}
    started_at: dict[str, float] = {}
    running: Counter[str] = Counter()
    slot_seconds: defaultdict[str, float] = defaultdict(float)
    over_limit, seen, order, next_sweep = 0, 0, len(owners), 60.0
    limits = settings.plan_table()
    _peak.clear()
    while events:
        at, _n, what, who = heapq.heappop(events)
        while next_sweep <= at:
            clock.advance(next_sweep - clock.monotonic() + 1000.0)
            sweep(services)
            next_sweep += 60.0
            seen = _starts(queue, seen, started_at, accepted, running, events, clock, rng,
                           order, limits, paid)
        clock.advance(at - (clock.monotonic() - 1000.0))
        if what == "arrive":
            admission = admit(services, uid=who, channel="app",
                              plan="pro" if who in paid else None)
            job = accept_job(services, uid=who, channel="app", request=REQUEST,
                             admission=admission)
            accepted[job.job_id] = (who, at)
            _first_delivery(services, job.job_id)
        else:
            uid = accepted[who][0]
            slot_seconds[uid] += at - started_at[who]
            running[uid] -= 1
            run_job(who, services)
        before = len(started_at)
        seen = _starts(queue, seen, started_at, accepted, running, events, clock, rng,
                       order + len(started_at), limits, paid)
        for job_id in list(started_at)[before:]:
            uid = accepted[job_id][0]
            plan = limits["pro" if uid in paid else "free"]
            over_limit += running[uid] > plan.running
    waits: dict[str, list[float]] = {"paid": [], "free": []}
    for job_id, at in started_at.items():
        uid, arrived = accepted[job_id]
        waits["paid" if uid in paid else "free"].append(at - arrived)
    ended = [store.get(job_id) for job_id in accepted]
    lost = sum(1 for job in ended if job is None or not job.terminal)
    expired = sum(1 for job in ended if job and job.error and job.error.get("code") == "expired")
    hot_doc, hot_rate = timed.hottest()
    most = max(slot_seconds.values()) / max(1e-9, sum(slot_seconds.values()))
    return {"accepted": len(accepted), "lost": lost, "expired": expired,
            "over_limit": over_limit, "waits": waits, "max_share": most * 100,
            "hot_doc": hot_doc, "hot_rate": hot_rate, "span": clock.monotonic() - 1000.0,
            "most_running": max(_peak.values()) if _peak else 0}


_peak: Counter[str] = Counter()


def _first_delivery(services: Services, job_id: str) -> None:
    """The arrival's first delivery, as the worker makes it (``dispatch.arrive``): when
    it takes its places it starts now (the worker would claim and run it in the same
    delivery; here it runs at the end of its simulated generation, so its start is
    published as a pass's would be, for :func:`_starts`); otherwise it records why it
    waits, and a pass starts it later."""
    job = services.store.get(job_id)
    assert job is not None
    places = dispatch.arrive(services, job)
    if places:
        services.store.transact(job_id, lambda current: (
            lifecycle.start(current, pools=places), None))
        services.queue.publish(job_id, reason="start")


def _starts(queue: RecordingQueue, seen: int, started_at: dict[str, float],
            accepted: dict[str, tuple[str, float]], running: Counter[str],
            events: list[Any], clock: FakeClock, rng: random.Random, order: int,
            limits: Any, paid: set[str]) -> int:
    """Jobs started since ``seen`` (a pass's or a placed arrival's ``start`` message; an
    arrival's ``new`` one is only its first delivery) run now and end after their
    duration."""
    now = clock.monotonic() - 1000.0
    for job_id, reason in queue.published[seen:]:
        if job_id in started_at or reason != "start":
            continue
        started_at[job_id] = now
        uid = accepted[job_id][0] if job_id in accepted else ""
        running[uid] += 1
        _peak[uid] = max(_peak[uid], running[uid])
        heapq.heappush(events, (now + rng.uniform(4.0, 12.0), order + len(started_at), "end",
                                job_id))
    return len(queue.published)


def _wrap(store: InMemoryJobStore, counters: InMemoryCounters, slots: InMemorySlots,
          timed: Timed) -> None:
    create, apply, tickets, take, release = (store.create, store.apply, counters.take,
                                             slots.take, slots.release)

    def t_create(job: Any) -> bool:
        timed.note(f"jobs/{job.id}")
        return create(job)

    def t_apply(job_id: str, change: Any) -> None:
        if change.job:
            timed.note(f"jobs/{job_id}")
        if change.server:
            timed.note(f"jobs/{job_id}/private/server")
        apply(job_id, change)

    def t_tickets(key: str, count: int, limit: int, holder: str = "") -> list[int] | None:
        numbers = tickets(key, count, limit, holder)
        for number in numbers or ():
            timed.note(f"quotaTickets/{key}~{number}")
        return numbers

    def t_take(pool: str, capacity: int, job_id: str, done: Any = None,
               limit: int | None = None) -> bool:
        before = Counter(slots.writes)
        ok = take(pool, capacity, job_id, done, limit)
        for doc in (Counter(slots.writes) - before):
            timed.note(f"slots/{doc}")
        return ok

    def t_release(pool: str, job_id: str) -> None:
        before = Counter(slots.writes)
        release(pool, job_id)
        for doc in (Counter(slots.writes) - before):
            timed.note(f"slots/{doc}")

    store.create, store.apply, counters.take = t_create, t_apply, t_tickets  # type: ignore[method-assign]
    slots.take, slots.release = t_take, t_release  # type: ignore[method-assign]


def admission_on_stack(rate: float = 50.0, seconds: float = 10.0) -> tuple[list[float], Counter[str]]:
    """Latencies (ms) of admit + accept_job at ``rate``/s on the local stack (the
    acceptances answered), and the codes of those refused (a 503 to a caller)."""
    from kiln.core.errors import KilnError
    from kiln_dev.stack import LocalStack, StackConfig

    latencies: list[float] = []
    refused: Counter[str] = Counter()
    lock = threading.Lock()
    env = {"KILN_PLANS": PLANS, "KILN_PROVIDER_CAPACITY": str(CAPACITY),
           "KILN_MAX_WAITING": "100000"}
    with LocalStack(StackConfig(env=env)) as stack:
        services = stack.services()
        for uid in ("warm-a", "warm-b"):  # first calls build the clients
            accept_job(services, uid=uid, channel="app", request=REQUEST,
                       admission=admit(services, uid=uid, channel="app", plan=None))

        def one(n: int) -> None:
            uid = f"u{n % 100}"
            start = time.perf_counter()
            try:
                accept_job(services, uid=uid, channel="app", request=REQUEST,
                           admission=admit(services, uid=uid, channel="app", plan="pro"))
            except KilnError as exc:
                with lock:
                    refused[exc.code] += 1
                return
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

        threads = []
        begin = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=one, args=(n,))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    return latencies, refused


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-stack", action="store_true", help="skip the emulator part")
    parser.add_argument("--seconds", type=float, default=10.0, help="the emulator part's length")
    args = parser.parse_args(argv)
    result = simulate()
    waits = result["waits"]
    print(f"simulated: {result['accepted']} jobs accepted, drained in {result['span']:.0f} s "
          f"(fake clock), capacity {CAPACITY}")
    for group in ("paid", "free"):
        print(f"  {group} wait p50 {statistics.median(waits[group]):.1f} s, "
              f"p95 {pct(waits[group], 0.95):.1f} s ({len(waits[group])} jobs)")
    print(f"  most running of one user at once {result['most_running']} (limits: free 2, pro 4);"
          f" over-limit starts {result['over_limit']}; expired {result['expired']}; "
          f"lost {result['lost']}")
    print(f"  largest share of slot-seconds held by one user {result['max_share']:.1f} %")
    print(f"  hottest document {result['hot_doc']}: {result['hot_rate']:.2f} writes/s "
          "(busiest 10 s)")
    if not args.no_stack:
        latencies, refused = admission_on_stack(seconds=args.seconds)
        print(f"stack: admission (admit + accept_job) at 50 jobs/s, {len(latencies)} accepted: "
              f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms; "
              f"refused (503) {sum(refused.values())} {dict(refused)}")
    print(f"fairness: lost {result['lost']}, over-limit {result['over_limit']}, "
          f"paid p50 wait {statistics.median(waits['paid']):.1f} s, "
          f"free p50 wait {statistics.median(waits['free']):.1f} s, "
          f"max share {result['max_share']:.1f} %, "
          f"hottest doc {result['hot_rate']:.2f} writes/s")


if __name__ == "__main__":
    main()
