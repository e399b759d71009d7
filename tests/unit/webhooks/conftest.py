"""Fixtures of the webhook unit tests: Kiln on fakes (real wall time, so receivers can
check the signature's timestamp) and a stand-in receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kiln.adapters.clock import utcnow
from kiln.compose import Services
from kiln.settings import Settings
from kiln.webhooks.channel import ApiChannel
from kiln_dev.fakes import FakeClock, FakeScheduler, InMemoryJobStore, RecordingQueue
from kiln_dev.fakes_webhooks import InMemoryWebhookStore
from kiln_dev.standins.webhook_receiver import WebhookReceiver


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


@pytest.fixture
def kit() -> Kit:
    return build_kit()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r
