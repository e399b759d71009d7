"""What one delivery of a job did: the worker's return value (logged, returned to tests)."""

from __future__ import annotations

import enum


class RunOutcome(enum.StrEnum):
    """What one delivery did (logged, returned to tests)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    RELEASED = "released"  # a retryable failure: back to pending (raised, not returned)
    NOT_YET = "not_yet"  # in retry backoff: nacked (raised, not returned)
    WAITING = "waiting"  # parked on its remote task until the next check
    STALE = "stale"  # a check that is not the job's live one
    QUEUED = "queued"  # waiting for its places in the fair queue (or put back there)
    ARRIVED_WAITING = "arrived_waiting"  # a new job's first delivery: no place free, it waits
    LEASE_LOST = "lease_lost"
    POISON = "poison"
    TERMINAL = "terminal"
    BUSY = "busy"
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    MISSING = "missing"
    WEBHOOK = "webhook"  # a webhook delivery's attempt (kiln.webhooks.delivery)
