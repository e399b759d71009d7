"""A Kiln composed of fakes (``kiln_dev.fakes``) and scripted providers, on a fake clock
(a unique module name: ``from rig import …``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import CanceledError
from kiln.core.job import Job
from kiln.core.policy import PollCadence
from kiln.core.requests import parse_job_request
from kiln.providers.base import Artifact, GenerationRequest, TaskState, TaskStatus
from kiln.providers.offline import OfflineProvider
from kiln.runtime import dispatch
from kiln.runtime.accept import accept_job
from kiln.runtime.worker import RunOutcome, run_job
from kiln.settings import Settings
from kiln_dev.fakes import (
    FakeClock,
    FakeScheduler,
    InMemoryBlobs,
    InMemoryCounters,
    InMemoryDevices,
    InMemoryJobStore,
    InMemorySlots,
    InMemoryTaskIndex,
    RecordingPush,
    RecordingQueue,
    TokenVerifier,
)
from kiln_dev.fakes_api import InMemoryBatchStore, InMemoryKeyStore
from kiln_dev.fakes_webhooks import InMemoryWebhookStore


class Killed(BaseException):
    """The worker's process dies here (nothing after it runs)."""


def kill_at(monkeypatch: Any, owner: Any, name: str) -> Callable[[], None]:
    """Make ``owner.name`` kill the worker (raise :class:`Killed`); returns the revival
    (``monkeypatch.undo``)."""
    def die(*_args: Any) -> Any:
        raise Killed()

    monkeypatch.setattr(owner, name, die)
    return monkeypatch.undo  # type: ignore[no-any-return]

def real_artifact(kind: str, clock: FakeClock) -> Artifact:
    """A real PNG or GLB (the offline generator, instantly), so validators run for real."""
    provider = OfflineProvider(0.0, 0.0, sleep=clock.sleep, clock=clock.monotonic)
    return provider.generate(GenerationRequest("x", kind, "a red cube"), lambda _p, _s: None,
                             lambda: False)


@dataclass
class SyncFake:
    """A one-call provider: reports ``steps`` of progress (advancing the clock), then
    returns a real artifact or raises ``error``; ``hang`` waits for a stop."""

    clock: FakeClock
    name: str = "syncfake"
    steps: list[tuple[int, str]] = field(default_factory=lambda: [(30, "generating"),
                                                                  (80, "generating")])
    step_seconds: float = 1.0
    error: Exception | None = None
    hang: bool = False
    calls: int = 0

    def generate(self, request: GenerationRequest, on_progress: Callable[[int, str], None],
                 should_stop: Callable[[], bool]) -> Artifact:
        self.calls += 1
        for progress, stage in self.steps:
            self.clock.advance(self.step_seconds)
            on_progress(progress, stage)
            if should_stop():
                raise CanceledError("stopped")
        while self.hang:
            self.clock.advance(1.0)
            if should_stop():
                raise CanceledError("stopped")
        if self.error is not None:
            raise self.error
        return real_artifact(request.kind, self.clock)


@dataclass
class TaskFake:
    """A remote-task provider whose polls answer ``statuses`` in turn (the last repeats)."""

    clock: FakeClock
    statuses: list[TaskStatus] = field(default_factory=lambda: [
        TaskStatus(TaskState.RUNNING, 40, "meshing"), TaskStatus(TaskState.SUCCEEDED, 90)])
    name: str = "taskfake"
    cadence: PollCadence = field(default_factory=lambda: PollCadence(first=5.0, max=20.0))
    submitted: list[str] = field(default_factory=list)
    polled: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    cancel_error: Exception | None = None
    #: called inside every submit and poll: what happens while the provider answers
    during_call: Callable[[], None] | None = None

    def submit(self, request: GenerationRequest) -> str:
        task_id = f"task-{len(self.submitted) + 1}"
        self.submitted.append(task_id)
        if self.during_call is not None:
            self.during_call()
        return task_id

    def poll(self, task_id: str) -> TaskStatus:
        self.polled.append(task_id)
        if self.during_call is not None:
            self.during_call()
        index = min(len(self.polled) - 1, len(self.statuses) - 1)
        return self.statuses[index]

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        return real_artifact(request.kind, self.clock)

    def cancel(self, task_id: str) -> None:
        if self.cancel_error is not None:
            raise self.cancel_error
        self.canceled.append(task_id)


@dataclass
class Channel:
    """A conversation channel that records what it was told."""

    progress: list[tuple[str, int, str]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    defer: bool = False  # the chat cannot be reached now: defer every end
    fail_progress: bool = False

    def on_started(self, services: Any, job: Job) -> None:
        self.started.append(job.id)

    def redeliver(self, services: Any, started: dt.datetime | None = None) -> int:
        done, self.deferred = self.deferred, []
        for job_id in done:
            services.store.apply(job_id, lifecycle.notified("sent", {"channel": {"attempt": 2}}))
        return len(done)

    def on_progress(self, services: Any, job: Job, progress: int, stage: str) -> None:
        if self.fail_progress:
            raise RuntimeError("chat down")
        self.progress.append((job.id, progress, stage))

    def on_finished(self, services: Any, job: Job) -> dict[str, Any]:
        self.finished.append(job.id)
        if self.defer:
            self.deferred.append(job.id)
            return {"deferred": 1}
        return {"sent": "reply"}


@dataclass
class Rig:
    services: Services
    clock: FakeClock
    store: InMemoryJobStore
    queue: RecordingQueue
    blobs: InMemoryBlobs
    push: RecordingPush
    devices: InMemoryDevices
    channel: Channel
    providers: dict[str, Any]
    scheduler: FakeScheduler
    task_index: InMemoryTaskIndex
    counters: InMemoryCounters
    slots: InMemorySlots
    cursor: int = 0  # queue deliveries already run by deliver_next / drive

    def submit(self, kind: str = "image", prompt: str = "a red cube", uid: str = "alice",
               channel: str = "app", **server: Any) -> str:
        accepted = accept_job(self.services, uid=uid, channel=channel,
                              request=parse_job_request({"kind": kind, "prompt": prompt}),
                              server=server or None)
        # Placed as its first delivery would place it (it holds its places and left the
        # queue, not yet claimed); the acceptance's own message is the test's to run
        # (run_job or drive).
        places = dispatch.arrive(self.services, self.job(accepted.job_id))
        if places:
            self.store.transact(accepted.job_id,
                                lambda job: (lifecycle.start(job, pools=places), None))
        self.cursor = len(self.queue.deliveries)
        return accepted.job_id

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def deliver_next(self) -> RunOutcome | None:
        """Run the next published delivery, as Pub/Sub would; when none is queued, move
        the clock to the next scheduled check and let the scheduler publish it. None when
        nothing is left."""
        if self.cursor >= len(self.queue.deliveries):
            at = self.scheduler.next_at()
            if at is None:
                return None
            if at > self.clock.now():
                self.clock.advance((at - self.clock.now()).total_seconds())
            self.scheduler.fire(self.clock.now())
        delivery = self.queue.deliveries[self.cursor]
        self.cursor += 1
        return run_job(delivery.job_id, self.services, check=delivery.check)

    def drive(self, job_id: str, limit: int = 50) -> list[RunOutcome]:
        """The first delivery of a just-submitted job, then every delivery and scheduled
        check that follows, until nothing is left (or ``limit``)."""
        self.cursor = len(self.queue.deliveries)
        outcomes = [run_job(job_id, self.services)]
        while len(outcomes) < limit:
            outcome = self.deliver_next()
            if outcome is None:
                break
            outcomes.append(outcome)
        return outcomes


def api_call(rig: Rig, authorization: str, method: str, path: str, body: Any = None,
             key: str | None = None) -> tuple[int, Any, Any]:
    """One request through the HTTP API's router over the rig: (status, JSON, headers)."""
    import flask

    from kiln.http.api import handle

    headers = {"Authorization": authorization}
    if key is not None:
        headers["Idempotency-Key"] = key
    with flask.Flask(__name__).test_request_context(path, method=method, json=body,
                                                    headers=headers):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json(), response.headers


def build_rig(provider: Any = None, *, factories: dict[str, Any] | None = None,
              store: InMemoryJobStore | None = None, **settings: Any) -> Rig:
    """A composition of fakes; ``factories`` replace the provider factories, ``store``
    shares another rig's jobs."""
    clock = FakeClock() if store is None else store.clock
    store = store or InMemoryJobStore(clock)
    queue, blobs = RecordingQueue(), InMemoryBlobs()
    scheduler, task_index = FakeScheduler(queue), InMemoryTaskIndex()
    push, devices, channel = RecordingPush(), InMemoryDevices(), Channel()
    counters, slots = InMemoryCounters(store), InMemorySlots(clock.monotonic)
    providers: dict[str, Any] = {"image": provider or SyncFake(clock),
                                 "model": provider or TaskFake(clock)}
    base = dict(project="demo-unit", progress_interval_seconds=1.0, lease_seconds=30.0,
                retry_backoff_seconds=10.0, max_attempts=3, worker_budget_seconds=480.0,
                pending_republish_seconds=60.0, job_max_age_seconds=3600.0,
                image_provider="image", model_provider="model")
    services = Services(
        Settings(**{**base, **settings}),
        providers=factories or {"image": lambda _s: providers["image"],
                                "model": lambda _s: providers["model"]},
        store=store, devices=devices, queue=queue, blobs=blobs, push=push, auth=TokenVerifier(),
        clock=clock, channels={"telegram": channel}, scheduler=scheduler, task_index=task_index,
        counters=counters, slots=slots,
        keys=InMemoryKeyStore(), batches=InMemoryBatchStore(store),
        webhooks=InMemoryWebhookStore(),
    )
    return Rig(services, clock, store, queue, blobs, push, devices, channel, providers,
               scheduler, task_index, counters, slots)

