"""The fair start: which waiting jobs go first when places free up (pure logic).

A waiting job's effective priority is its plan's priority plus one point per
``ageing_seconds`` it has waited, so a free job waiting long enough ranks with a fresh
paid one and is never starved. Within one effective priority, users take turns: a user's
k-th waiting job (oldest first) has turn k, and every user's turn k comes before anyone's
turn k+1 (round-robin); ties go to the job that waited longest. The running limit and the
provider capacity are enforced by the places (``kiln.ports.Slots``), not here.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    """One job waiting to start."""

    job_id: str
    uid: str
    priority: int
    queued_at: dt.datetime


def effective_priority(item: Waiting, now: dt.datetime, ageing_seconds: float) -> int:
    waited = max(0.0, (now - item.queued_at).total_seconds())
    return item.priority + int(waited // ageing_seconds)


def order(waiting: Iterable[Waiting], *, now: dt.datetime,
          ageing_seconds: float) -> list[Waiting]:
    """``waiting`` in the order they should start."""
    by_user: dict[str, list[Waiting]] = defaultdict(list)
    for item in sorted(waiting, key=lambda w: (w.queued_at, w.job_id)):
        by_user[item.uid].append(item)
    keyed = [((-effective_priority(item, now, ageing_seconds), turn, item.queued_at, item.job_id),
              item) for items in by_user.values() for turn, item in enumerate(items)]
    return [item for _key, item in sorted(keyed, key=lambda pair: pair[0])]
