"""Kiln's own write sentinels: the domain says "server time", "add one", "remove this";
each store adapter translates them (Firestore: ``SERVER_TIMESTAMP``, ``Increment``,
``DELETE_FIELD``; the in-memory fake: its clock, an addition, a removal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


class _ServerTime:
    """The store's own time at commit (one clock for every writer)."""

    def __repr__(self) -> str:
        return "SERVER_TIME"


class _Delete:
    """Remove the field."""

    def __repr__(self) -> str:
        return "DELETE"


@dataclass(frozen=True)
class Increment:
    """Add ``by`` to the stored number (0 when it is missing)."""

    by: int = 1


SERVER_TIME: Final = _ServerTime()
DELETE: Final = _Delete()
