"""``make bench-parts``'s in-process split of an accepted request (``request_steps``), on
the real emulators: every step it times is on the path the ingress takes; and its
``waking`` part, whose gRPC and socket servers answer each call after the delay it names."""

from __future__ import annotations

import re

from kiln_dev.bench_parts import WAKE_DELAYS, request_steps, waking
from kiln_dev.stack import LocalStack


def test_the_in_process_steps_time_every_step_of_an_accepted_request(stack: LocalStack) -> None:
    """Given 10 accepted requests through the ingress's app in a child process, each named
    step reads a time, the two gRPC calls and the commit's encoding take some, and no
    step reads below zero (a step the store no longer takes would read its caller's time
    as negative, or fail)."""
    lines = request_steps(stack, 10)

    steps = {m["name"].strip(): float(m["ms"]) for line in lines
             if (m := re.match(r"  (?P<name>.+?)\s+(?P<ms>-?\d+\.\d+) ms", line))}
    assert {"whole request", "the two gRPC calls", "building the commit", "the job's documents",
            "building the publish", "log lines", "the rest"} <= set(steps)
    assert steps["the two gRPC calls"] > 0 and steps["building the commit"] > 0
    assert all(ms >= 0 for ms in steps.values()), lines


def test_the_waking_part_times_both_kinds_of_call_at_every_delay() -> None:
    """Given 10 calls per delay through each kind (a real gRPC channel and a socket, to
    servers in another process), each delay reads a positive CPU time for both, and the
    servers took the calls (a server that never answered would fail the part)."""
    lines = waking(10, 1)

    read = {int(m["delay"]): (float(m["grpc"]), float(m["socket"])) for line in lines
            if (m := re.match(r"  answered after (?P<delay>\d+) ms: gRPC (?P<grpc>\d+\.\d+) ms, "
                              r"socket round trip (?P<socket>\d+\.\d+) ms", line))}
    assert sorted(read) == sorted(WAKE_DELAYS), lines
    assert all(grpc > 0 and sock > 0 for grpc, sock in read.values()), lines
