"""``make bench-parts``'s in-process split of an accepted request (``request_steps``), on
the real emulators: every step it times is on the path the ingress takes; its
``waking`` part, whose gRPC and socket servers answer each call after the delay it names;
and the delay proxy that holds a slower Redis's answers for the peer."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

from kiln_dev.bench_parts import WAKE_DELAYS, queue_pass, request_steps, waking
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


def test_the_queue_pass_part_reads_every_way_at_every_size(stack: LocalStack) -> None:
    """Given ended jobs added in two steps, each step reads the emulator's CPU for the
    pass and the count, through the index and over the jobs (none below zero), and the
    ended jobs were added (a part that wrote nothing would time an empty collection)."""
    from google.cloud import firestore

    from kiln.adapters.firestore import JOBS

    parts = stack.services().firestore.collection(JOBS).where(
        filter=firestore.FieldFilter("uid", "==", "parts"))
    before = parts.count().get()[0][0].value
    lines = queue_pass(stack, (30, 60), 2, 1)

    read = {int(m["size"]): m["rest"] for line in lines
            if (m := re.match(r"\s+(?P<size>\d+) jobs: (?P<rest>.+)", line))}
    assert sorted(read) == [30, 60], lines
    for rest in read.values():
        ways = dict(re.findall(r"(pass, index|pass, over jobs|count, index|count, over jobs) "
                               r"(\d+\.\d+) ms", rest))
        assert len(ways) == 4 and all(float(ms) >= 0 for ms in ways.values()), rest
    assert parts.count().get()[0][0].value - before == 60


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


def test_the_delay_proxy_passes_both_ways_and_holds_each_answer() -> None:
    """Given a line server behind ``kiln_dev.delay_proxy`` holding answers 30 ms, 5 requests
    through the proxy come back whole and in order, each no sooner than 30 ms after it
    was sent (the hold is a sleep before forwarding: a lower bound, not a race)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(b"got " + line)

    threading.Thread(target=serve, daemon=True).start()
    proxy = subprocess.Popen([sys.executable, "-m", "kiln_dev.delay_proxy",
                              str(listener.getsockname()[1]), "30", "--until-eof"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proxy.stdin is not None and proxy.stdout is not None
    try:
        port = int(proxy.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
                sock.makefile("rb") as answers:
            for i in range(5):
                sent = time.monotonic()
                sock.sendall(b"line %d\n" % i)
                assert answers.readline() == b"got line %d\n" % i
                assert time.monotonic() - sent >= 0.03
    finally:
        proxy.stdin.close()
        proxy.wait(timeout=10)
        listener.close()
