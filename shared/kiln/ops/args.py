"""Argument types of the operator commands: an id, a tenant or a count that cannot be one
is refused by argparse with a clear line and exit status 2, before any store is asked (a
slash in an id made a Firestore path error; ``--limit -3`` listed all but the oldest 3)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from kiln.core.errors import ValidationError
from kiln.core.job import is_valid_job_id
from kiln.core.keys import check_tenant

#: A Firestore document id Kiln makes (endpoints ``ep_…``, events ``msg_…``, keys): no
#: slash, not ``.``/``..``, not reserved (``__…__``).
_DOC_ID = re.compile(r"(?!__)[A-Za-z0-9_.:-]{1,128}")
#: The most rows a listing command reads.
MAX_LIMIT = 10_000


def job_id(value: str) -> str:
    if not is_valid_job_id(value):
        raise argparse.ArgumentTypeError(
            f"not a job id: {value!r} (8-64 letters, digits, '-' or '_')")
    return value


def doc_id(value: str) -> str:
    if not _DOC_ID.fullmatch(value) or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"not an id Kiln makes: {value!r}")
    return value


def tenant(value: str) -> str:
    try:
        return check_tenant(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc.message}") from None


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return number


def at_most(most: int) -> Callable[[str], int]:
    """:func:`positive`, and no more than ``most`` (``--width 10000000`` drew 10 MB lines)."""
    def bounded(value: str) -> int:
        number = positive(value)
        if number > most:
            raise argparse.ArgumentTypeError(f"at most {most}: {value!r}")
        return number

    return bounded
