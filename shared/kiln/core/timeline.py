"""A job's timeline: when each step of its way happened, in its server state.

The steps live in ``jobs/{jobId}/private/server`` under ``timeline`` (a map of step →
timestamp), which no client can read. No step costs a write of its own: each rides on
a write the job makes anyway (docs/timeline.md lists which carries which):

- ``accepted``: the create; ``published`` (the message's publish time), ``delivered``
  (the push reached a worker) and ``claimed``: the claim; ``check_N``: the claim of
  scheduled check N;
- ``submitted`` (the provider was asked; a remote task's checkpoint carries it),
  ``generated`` (the provider's result is here), ``stored`` (it is in Storage) and the end
  (``completed``, ``failed`` or ``released`` for a retry): the end write;
- ``notified``: the notification record.

Steps of a later attempt carry its number (``claimed_2``), so a retry adds to the
timeline instead of overwriting it. An explicit retry (``POST …:retry``) starts a new run
numbered from 1: its timeline starts again from ``accepted`` and ``retried``, and the run
before is kept as ``earlierRun``.

:func:`rows` is what every reader shows (``kiln trace``'s waterfall, the HTTP API's
``GET /v1/jobs/{jobId}/timeline`` through :func:`view`): each step's time since the
first and the gap since the one before, computed once here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, TypeVar

from kiln.core.job import Change, Job

FIELD = "timeline"
C = TypeVar("C", Change, Change | None)
#: The order steps are drawn in when two have the same time.
ORDER = ("accepted", "retried", "published", "delivered", "claimed", "check", "submitted",
         "generated",
         "stored",
         "completed", "failed", "canceled", "released", "notified")


def step(name: str, attempt: int = 1) -> str:
    """The key of ``name`` in ``attempt`` (``claimed``, ``claimed_2``, …)."""
    return name if attempt <= 1 else f"{name}_{attempt}"


def fields(steps: Mapping[str, dt.datetime | None]) -> dict[str, dt.datetime]:
    """Server-document field updates (dotted names) that record ``steps``."""
    return {f"{FIELD}.{name}": at for name, at in steps.items() if at is not None}


def carry(change: C, steps: Mapping[str, dt.datetime | None]) -> C:
    """``change`` with ``steps`` added to its server fields; None stays None (a step never
    makes a write of its own)."""
    if change is None or not change:
        return change
    return dataclasses.replace(change, server={**change.server, **fields(steps)})


def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 time as Pub/Sub writes it (``…T01:02:03.123456789Z``), or None."""
    if not isinstance(text, str) or not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        base = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    digits = "".join(ch for ch in frac if ch.isdigit())[:6].ljust(6, "0")
    return base.replace(microsecond=int(digits))


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    at: dt.datetime
    offset_ms: float  # since the first step


def steps(timeline: Mapping[str, Any] | None) -> list[Step]:
    """The recorded steps, oldest first, with their offsets from the first."""
    found = [(name, at) for name, at in (timeline or {}).items() if isinstance(at, dt.datetime)]
    if not found:
        return []

    def rank(item: tuple[str, dt.datetime]) -> tuple[dt.datetime, int]:
        base = item[0].split("_")[0]
        return item[1], ORDER.index(base) if base in ORDER else len(ORDER)

    found.sort(key=rank)
    first = found[0][1]
    return [Step(name, at, (at - first).total_seconds() * 1000) for name, at in found]


@dataclasses.dataclass(frozen=True)
class Row:
    """One step as every reader shows it."""

    step: str
    at: dt.datetime
    since_accepted_ms: float  # since the first step (``accepted``)
    gap_ms: float  # since the step before (0 for the first)


def rows(timeline: Mapping[str, Any] | None) -> list[Row]:
    """The recorded steps, oldest first, each with its offset and its gap."""
    out: list[Row] = []
    before = 0.0
    for found in steps(timeline):
        out.append(Row(found.name, found.at, found.offset_ms, found.offset_ms - before))
        before = found.offset_ms
    return out


def view(job: Job) -> dict[str, Any]:
    """The JSON answer of ``GET /v1/jobs/{jobId}/timeline``: the job's public id, kind,
    status and attempts, and its steps' names and times; nothing else of its server state.
    Milliseconds are rounded to 0.1."""
    found = rows(job.server.timeline)
    return {
        "jobId": job.id, "kind": job.kind, "status": job.status.value, "attempts": job.attempts,
        "totalMs": round(found[-1].since_accepted_ms, 1) if found else 0.0,
        "steps": [{"step": row.step, "at": _iso(row.at),
                   "sinceAcceptedMs": round(row.since_accepted_ms, 1),
                   "gapMs": round(row.gap_ms, 1)} for row in found],
    }


def _iso(at: dt.datetime) -> str:
    """RFC 3339 in UTC with microseconds (a naive time is taken as UTC)."""
    utc = at.astimezone(dt.UTC) if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")
