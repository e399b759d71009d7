"""Operator command ``kiln trace JOB_ID``: a job's timeline as a waterfall in the terminal.

Reads the steps the job recorded in its server state through ``kiln.core.timeline.rows``
(the same rows the HTTP API's ``GET /v1/jobs/{jobId}/timeline`` answers); each row is one
step, its time since the first, the gap since the step before, and a bar over that
gap on a shared scale::

    step            at (ms)   took (ms)
    accepted            0.0         0.0  ▏
    published           2.9         2.9  █
    delivered         104.1       101.2  ██████████████████████
"""

from __future__ import annotations

import argparse
from typing import Any

from kiln.core import timeline
from kiln.ops import args as argtypes
from kiln.ops.jobs import services_of

WIDTH = 48
MAX_WIDTH = 500


def add_parser(sub: Any) -> None:
    trace = sub.add_parser("trace", help="a job's timeline as a waterfall (operators)")
    trace.add_argument("job_id", type=argtypes.job_id)
    trace.add_argument("--width", type=argtypes.at_most(MAX_WIDTH), default=WIDTH,
                       help=f"bar width in columns (at most {MAX_WIDTH})")
    trace.set_defaults(handler=cmd_trace)


def waterfall(rows: list[timeline.Row], width: int = WIDTH) -> list[str]:
    """The lines of the waterfall (no header when there are no steps)."""
    if not rows:
        return []
    total = max(rows[-1].since_accepted_ms, 1e-9)
    lines = [f"  {'step':<14} {'at (ms)':>9} {'took (ms)':>10}"]
    before = 0.0
    for row in rows:
        start = min(width - 1, int(before / total * width))
        end = max(start + 1, round(row.since_accepted_ms / total * width))
        bar = " " * start + ("█" * (end - start) if row.gap_ms > 0 else "▏")
        lines.append(f"  {row.step:<14} {row.since_accepted_ms:>9.1f} {row.gap_ms:>10.1f}  {bar}")
        before = row.since_accepted_ms
    return lines


def cmd_trace(args: argparse.Namespace) -> int:
    job = services_of(args).store.get(args.job_id)
    if job is None:
        print(f"no job {args.job_id}")
        return 1
    rows = timeline.rows(job.server.timeline)
    print(f"job {job.id}  {job.kind}  {job.status.value}  attempts {job.attempts}")
    if not rows:
        print("  no timeline recorded (a job accepted before timelines existed)")
        return 0
    print(f"  {len(rows)} steps over {rows[-1].since_accepted_ms:.1f} ms, from "
          f"{rows[0].at.isoformat(timespec='milliseconds')}")
    print("\n".join(waterfall(rows, args.width)))
    return 0
