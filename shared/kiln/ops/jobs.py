"""Operator commands: ``kiln jobs list|show|cancel|retry``.

They act on Firestore directly with the same lifecycle transitions as the API (an
operator may act on any user's job). Which project or stack they act on is the caller's
choice: the command line that mounts them sets ``args.services``, a zero-arg callable
returning the ``Services`` to use (the dev CLI's reads ``.kiln/dev.json``); without one
they use :func:`kiln.compose.get_services` (the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from kiln.compose import Services, get_services
from kiln.core.errors import TransitionError
from kiln.ops import args as argtypes
from kiln.runtime import actions

#: Where a handler's ``Services`` come from (``args.services``).
ServicesSource = Callable[[], Services]


def services_of(args: argparse.Namespace) -> Services:
    """The ``Services`` an operator command acts on: ``args.services()`` when the command
    line provides a source, else the environment's (:func:`kiln.compose.get_services`)."""
    source: ServicesSource | None = getattr(args, "services", None)
    return (source or get_services)()


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list, show, cancel or retry jobs (operators)")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="recent jobs, newest first")
    ls.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                         "canceled"])
    ls.add_argument("--uid")
    ls.add_argument("--limit", type=argtypes.at_most(argtypes.MAX_LIMIT), default=20)
    ls.set_defaults(handler=cmd_list)
    for name, handler in (("show", cmd_show), ("cancel", cmd_cancel), ("retry", cmd_retry)):
        verb = verbs.add_parser(name, help=f"{name} one job")
        verb.add_argument("job_id", type=argtypes.job_id)
        verb.set_defaults(handler=handler)


#: Newest jobs read to pick those of one status from (one query, newest first).
STATUS_WINDOW = 500


def cmd_list(args: argparse.Namespace) -> int:
    services = services_of(args)
    read = services.store.recent(args.uid, args.limit if args.status is None else STATUS_WINDOW)
    jobs = [job for job in read if args.status in (None, job.status.value)][: args.limit]
    print(f"{'JOB':<22} {'STATUS':<10} {'KIND':<5} {'PROG':>4} {'TRIES':>5}  {'UID':<20} PROMPT")
    for job in jobs:
        print(f"{job.id:<22} {job.status.value:<10} {job.kind:<5} "
              f"{job.progress:>3}% {job.attempts:>5}  "
              f"{job.uid[:20]:<20} {job.prompt[:40]}")
    if args.status is not None and len(jobs) < args.limit and len(read) == STATUS_WINDOW:
        print(f"(only the newest {STATUS_WINDOW} jobs were looked at for status {args.status})")
    return 0


def show(services: Services, job_id: str) -> dict[str, Any] | None:
    """What ``kiln jobs show`` prints: the public view and the typed server state."""
    job = services.store.get(job_id)
    if job is None:
        return None
    view = job.public_view()
    view["server"] = dataclasses.asdict(job.server)
    return view


def cmd_show(args: argparse.Namespace) -> int:
    view = show(services_of(args), args.job_id)
    if view is None:
        print(f"no job {args.job_id}")
        return 1
    print(json.dumps(view, indent=2, default=str))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        outcome = actions.cancel(services_of(args), args.job_id, by="operator")
    except TransitionError as exc:
        print(exc.message)
        return 1
    print(f"{args.job_id}: canceled" + ("" if outcome.changed else " (already)"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    try:
        outcome = actions.retry(services_of(args), args.job_id, by="operator")
    except TransitionError as exc:
        print(exc.message)
        return 1
    print(f"{args.job_id}: pending again, published" if outcome.changed
          else f"{args.job_id}: already {outcome.status}")
    return 0
