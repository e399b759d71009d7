"""A window of a query's documents that moves from call to call.

An unordered Firestore query returns its matches in document-id order, so its ``limit``
reads the lowest ids every time: with more matches than that, the others are never
read. The passes that look at a bounded number of jobs (the fair queue's, the
sweeper's) read :func:`rotated` windows instead: each starts at a random document id
and wraps around, so every match is read by some passes (with ``n`` matches and a
window of ``limit``, each pass reads a given one with probability ``limit / n``). Job
ids are random or hashed hex, so a random hex start is a uniform one.
"""

from __future__ import annotations

import secrets
from typing import Any

#: Hex digits of a window's start (job ids are 20).
PIVOT_DIGITS = 20


def rotated(query: Any, limit: int, pivot: str | None = None) -> list[Any]:
    """Up to ``limit`` snapshots of ``query``: from document id ``pivot`` (random when
    None) in id order, then from the first id up to it. Two queries when fewer than
    ``limit`` follow the pivot (then all matches are read if they fit)."""
    start = pivot if pivot is not None else secrets.token_hex(PIVOT_DIGITS // 2)
    by_id = query.order_by("__name__")
    window = list(by_id.start_at({"__name__": start}).limit(limit).stream())
    if len(window) < limit:
        window += by_id.end_before({"__name__": start}).limit(limit - len(window)).stream()
    return window
