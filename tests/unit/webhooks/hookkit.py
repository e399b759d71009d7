"""Kiln on fakes for the webhook unit tests (real wall time, so receivers can check the
signature's timestamp); a unique module name: ``from hookkit import …``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.adapters.clock import utcnow
from kiln.compose import Services
from kiln.core.job import Job, JobStatus, ServerState
from kiln.settings import Settings
from kiln.webhooks.channel import ApiChannel
from kiln_dev.fakes import FakeClock, FakeScheduler, InMemoryJobStore, RecordingQueue
from kiln_dev.fakes_webhooks import InMemoryWebhookStore


@dataclass
class Kit:
    services: Services
    clock: FakeClock
    queue: RecordingQueue
    scheduler: FakeScheduler
    hooks: InMemoryWebhookStore

    def pending_wakes(self) -> list[tuple[str, int]]:
        """The wake-ups published now (delivery id, attempt), oldest first; forgets them."""
        found = [(d.job_id, d.check or 1) for d in self.queue.deliveries]
        self.queue.deliveries.clear()
        self.queue.published.clear()
        return found


def build_kit(**settings: Any) -> Kit:
    clock = FakeClock(utcnow())
    queue = RecordingQueue()
    scheduler = FakeScheduler(queue)
    hooks = InMemoryWebhookStore()
    base: dict[str, Any] = dict(project="demo-unit", env="local", webhook_timeout_seconds=2.0)
    services = Services(Settings(**{**base, **settings}), store=InMemoryJobStore(clock),
                        queue=queue, scheduler=scheduler, webhooks=hooks, clock=clock,
                        channels={"api": ApiChannel()})
    return Kit(services, clock, queue, scheduler, hooks)


def finished_job(status: JobStatus = JobStatus.COMPLETED, *, job_id: str = "job0000001",
                 webhook: str | None = None) -> Job:
    result = {"downloadUrl": "https://files.example/r.png", "contentType": "image/png",
              "bytes": 10} if status is JobStatus.COMPLETED else None
    error = {"code": "provider_failed", "message": "It failed."} \
        if status is JobStatus.FAILED else None
    return Job(job_id, "api:acme", "api", "image", "a cube", status, result=result, error=error,
               progress=100, server=ServerState(webhook=webhook))
