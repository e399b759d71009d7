"""Operator commands: ``kiln jobs list|show|cancel|retry``.

They act on Firestore directly with the same lifecycle transitions as the API (an
operator may act on any user's job), against the local stack (``.kiln/dev.json``) or
the project the environment points at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from kiln.core import lifecycle
from kiln.core.errors import TransitionError
from kiln.runtime import actions


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list, show, cancel or retry jobs (operators)")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="recent jobs, newest first")
    ls.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                         "canceled"])
    ls.add_argument("--uid")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(handler=cmd_list)
    for name, handler in (("show", cmd_show), ("cancel", cmd_cancel), ("retry", cmd_retry)):
        verb = verbs.add_parser(name, help=f"{name} one job")
        verb.add_argument("job_id")
        verb.set_defaults(handler=handler)


def _services() -> Any:
    from kiln_dev.cli import use_dev_stack

    use_dev_stack()
    from kiln.compose import get_services

    return get_services()


def cmd_list(args: argparse.Namespace) -> int:
    services = _services()
    rows = list(services.store.find(status=args.status, uid=args.uid, limit=500))
    rows.sort(key=lambda r: r[1].get("createdAt") or dt.datetime.min.replace(tzinfo=dt.UTC),
              reverse=True)
    print(f"{'JOB':<22} {'STATUS':<10} {'KIND':<5} {'PROG':>4} {'TRIES':>5}  {'UID':<20} PROMPT")
    for job_id, job in rows[: args.limit]:
        print(f"{job_id:<22} {job.get('status', ''):<10} {job.get('kind', ''):<5} "
              f"{job.get('progress', 0):>3}% {job.get('attempts', 0):>5}  "
              f"{str(job.get('uid', ''))[:20]:<20} {str(job.get('prompt', ''))[:40]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    services = _services()
    job = services.store.get(args.job_id)
    if job is None:
        print(f"no job {args.job_id}")
        return 1
    view = lifecycle.public_view(args.job_id, job)
    view["_server"] = lifecycle.server(job)
    print(json.dumps(view, indent=2, default=str))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    try:
        outcome = actions.cancel(_services(), args.job_id, by="operator")
    except TransitionError as exc:
        print(exc.message)
        return 1
    print(f"{args.job_id}: canceled" + ("" if outcome.changed else " (already)"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    try:
        outcome = actions.retry(_services(), args.job_id, by="operator")
    except TransitionError as exc:
        print(exc.message)
        return 1
    print(f"{args.job_id}: pending again, published" if outcome.changed
          else f"{args.job_id}: already {outcome.status}")
    return 0
