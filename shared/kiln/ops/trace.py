"""Operator command ``kiln trace JOB_ID``: a job's timeline as a waterfall in the terminal.

Reads the steps the job recorded in its server state (``kiln.core.timeline``); each row
is one step, its time since the first, the gap since the step before, and a bar over that
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
from kiln.ops.jobs import services_of

WIDTH = 48


def add_parser(sub: Any) -> None:
    trace = sub.add_parser("trace", help="a job's timeline as a waterfall (operators)")
    trace.add_argument("job_id")
    trace.add_argument("--width", type=int, default=WIDTH, help="bar width in columns")
    trace.set_defaults(handler=cmd_trace)


def waterfall(steps: list[timeline.Step], width: int = WIDTH) -> list[str]:
    """The rows of the waterfall (no header when there are no steps)."""
    if not steps:
        return []
    total = max(steps[-1].offset_ms, 1e-9)
    rows = [f"  {'step':<14} {'at (ms)':>9} {'took (ms)':>10}"]
    before = 0.0
    for step in steps:
        start = min(width - 1, int(before / total * width))
        end = max(start + 1, round(step.offset_ms / total * width))
        took = step.offset_ms - before
        bar = " " * start + ("█" * (end - start) if took > 0 else "▏")
        rows.append(f"  {step.name:<14} {step.offset_ms:>9.1f} {took:>10.1f}  {bar}")
        before = step.offset_ms
    return rows


def cmd_trace(args: argparse.Namespace) -> int:
    job = services_of(args).store.get(args.job_id)
    if job is None:
        print(f"no job {args.job_id}")
        return 1
    steps = timeline.steps(job.server.timeline)
    print(f"job {job.id}  {job.kind}  {job.status.value}  attempts {job.attempts}")
    if not steps:
        print("  no timeline recorded (a job accepted before timelines existed)")
        return 0
    print(f"  {len(steps)} steps over {steps[-1].offset_ms:.1f} ms, from "
          f"{steps[0].at.isoformat(timespec='milliseconds')}")
    print("\n".join(waterfall(steps, args.width)))
    return 0
