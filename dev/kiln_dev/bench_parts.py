"""``make bench-parts``: the measurements behind ``make bench``'s numbers, one part at a
time, on the local stack's emulators (docs/benchmarks.md, "Where the time goes").

- **ingress CPU by request kind**: the ingress's gunicorn worker process, per request, for
  ``GET /healthz`` (HTTP, functions-framework, Flask, Kiln's router), a ``POST /v1/jobs``
  refused with 400, and an accepted one, split into the threads that handle requests
  and gRPC's own (EventEngine's, ``/proc/<pid>/task``; the ingress's older client path
  has none).
- **the load generator's client**: ``POST /v1/jobs`` at one client through httpx and
  through ``bench_load.job_poster``'s lean keep-alive connection, taking turns: each
  one's p50 and the client's own CPU per request.
- **an accepted request's steps, in process**: the functions-framework app called
  directly (no HTTP) in a child process, with thread-CPU timers around Kiln's steps.
- **a transaction against a write on a read**: ``JobStore.transact`` as a transaction
  (begin, read, commit) and with ``seen`` (a plain read, then a commit conditioned on
  both documents' update times), interleaved.
- **push relay streams**: publish → a bare HTTP endpoint through ``PushRelay`` with 4, 8
  and 12 pull streams (the emulator's pull loop sleeps 50 ms between looks).
- **waking up**: a call's CPU in the calling process by how long its answer takes (0, 2
  and 5 ms), through gRPC on the ingress's client path and through a plain socket, to
  servers in another process that sleep that long before answering (the emulators
  answer Kiln's calls in 0.5–3 ms, Redis the peer's in microseconds).
- **a queue pass as jobs pile up**: the Firestore emulator's CPU per pass of the fair
  queue (the worker's, at each job's end: the waiting jobs, at most 200) and per count of
  jobs waiting for a reason, as ended jobs are added to ``jobs``: through the
  ``waitingJobs`` index, and with the queries over ``jobs`` it replaced (the emulator
  reads every document of the collection a query names).
- **ingress CPU by library, against the peer** (``--libraries``; needs ``perf`` and
  ``redis-server``): ``POST /v1/jobs`` at one client on Kiln's ingress and on the Celery +
  Redis peer of ``make bench``, taking turns (the order alternating each round), each
  gunicorn worker sampled by ``perf record``; its CPU per request (``/proc``) split by
  the shared object the samples fell in (the Python interpreter, the kernel, gRPC's core,
  protobuf, the C libraries). Then the same turns without ``perf``, at 1 and 16 clients.
  Then each app alone: its WSGI app called directly in a child process (no HTTP, no
  gunicorn), the CPU of that whole process per accepted request, so the gap splits into
  the apps' own work and what serving them costs. Then the peer's app alone again with
  its Redis answering through a proxy in another process that holds each answer 0, 1 or
  2 ms: what the peer's CPU per request would be on a backend as slow as Kiln's
  emulators.

The emulators are warmed first, as ``make bench`` does (``--warm-emulators``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core import lifecycle, sentinels
from kiln.core.job import Change
from kiln.core.requests import parse_job_request
from kiln_dev import procfs
from kiln_dev.bench_e2e import push_floor, warm_emulators
from kiln_dev.bench_load import (
    closed_loop,
    cpu_seconds,
    job_poster,
    median,
    metered_loop,
    percentile,
)
from kiln_dev.stack import LocalStack, StackConfig


def _cpu(pid: int) -> float:
    """CPU seconds so far of process ``pid`` (all its threads)."""
    return procfs.stat(f"/proc/{pid}/stat").cpu


def _threads(pid: int) -> dict[tuple[str, str], float]:
    """(thread id, name) → CPU seconds so far, of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{tid}/stat"
        try:
            thread = procfs.stat(path)
        except (OSError, ValueError):
            continue
        out[(tid, thread.name)] = thread.cpu
    return out


def ingress_cpu(stack: LocalStack, requests: int, rounds: int) -> list[str]:
    worker = stack.worker_processes("ingress")[0]
    assert stack.relay is not None
    stack.relay.hold()  # the jobs wait, undelivered, while the other parts are measured
    kinds = ("healthz", "refused", "accepted")
    per: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:
        def send(kind: str, n: int, token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            for i in range(n):
                if kind == "healthz":
                    response = client.get("/healthz")
                elif kind == "refused":
                    response = client.post("/v1/jobs", json={"kind": "nope", "prompt": "x"},
                                           headers=headers)
                else:
                    response = client.post("/v1/jobs", headers=headers,
                                           json={"kind": "image", "prompt": f"parts {i}"})
                assert response.status_code == {"healthz": 200, "refused": 400,
                                                 "accepted": 202}[kind], response.text

        for kind in kinds:
            send(kind, 100, emulator_id_token("parts-warm", stack.config.project))
        for n in range(rounds):
            token = emulator_id_token(f"parts-{n}", stack.config.project)
            for kind in kinds:
                before = _threads(worker)
                send(kind, requests, token)
                after = _threads(worker)
                split: dict[str, float] = {"python": 0.0, "grpc": 0.0}
                for key, seconds in after.items():
                    group = "grpc" if key[1].startswith(("event_engine", "grpc")) else "python"
                    split[group] += (seconds - before.get(key, 0.0)) / requests * 1000
                per[kind].append(split)
    lines = [f"ingress CPU per request (gunicorn worker, median of {rounds} × {requests}):"]
    for kind in kinds:
        total = median(sum(c.values()) for c in per[kind])
        grpc_ms = median(c["grpc"] for c in per[kind])
        lines.append(f"  {kind:<9} {total:.2f} ms  (gRPC's own threads {grpc_ms:.2f} ms)")
    return lines


def client_cost(stack: LocalStack, requests: int, rounds: int) -> list[str]:
    """The load generator's own part of a recorded acknowledgement: ``POST /v1/jobs`` at
    one client through httpx (the benchmark's client before the twelfth pass) and through
    ``job_poster``'s lean connection, taking turns (the order alternating each round):
    each one's p50 and the CPU this process spent per request (the client's side)."""
    assert stack.relay is not None
    stack.relay.hold()
    url = stack.ingress_url
    token = emulator_id_token("parts-client", stack.config.project)
    per: dict[str, list[tuple[float, float]]] = {"httpx": [], "connection": []}
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client, \
            job_poster(url, token, 1, "client") as lean:
        def general(i: int) -> None:
            response = client.post("/v1/jobs", json={"kind": "image", "prompt": f"client {i}"})
            assert response.status_code == 202, response.text

        sends = {"httpx": general, "connection": lean}
        for send in sends.values():
            closed_loop(send, 100, 1)
        for n in range(rounds):
            for name in sorted(sends, reverse=n % 2 == 1):
                run, cpu = metered_loop(sends[name], requests, 1, time.process_time)
                per[name].append((run.p50, cpu))
    lines = [f"the load generator's client (POST /v1/jobs, 1 client, median of "
             f"{rounds} × {requests}):"]
    for name, values in per.items():
        lines.append(f"  {name:<11} p50 {median(v[0] for v in values):.2f} ms, "
                     f"its own CPU {median(v[1] for v in values):.2f} ms per request")
    return lines


def _child(what: str, env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """What ``python -m kiln_dev.bench_parts ARGS`` printed in a child process with
    ``env``; raises, naming ``what``, if it failed."""
    done = subprocess.run([sys.executable, "-m", "kiln_dev.bench_parts", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return done.stdout


def request_steps(stack: LocalStack, requests: int) -> list[str]:
    """:func:`_steps_here` in a child process with the functions' environment."""
    env = {**os.environ, **stack.function_env(), "KILN_OFFLINE_IMAGE_SECONDS": "0"}
    return _child("the in-process steps", env, "--steps-here", str(requests)).splitlines()


def _steps_here(requests: int) -> list[str]:
    """Thread CPU of ``POST /v1/jobs`` and ``GET /healthz`` through the functions-framework
    app of ``kiln_dev/functions.py`` (the stack's ingress), by step."""
    from kiln import log
    from kiln.adapters import firestore, wire
    from kiln.http import api

    app = _ingress_app()
    spent: dict[str, float] = {}

    def timed(owner: Any, name: str, label: Any) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                key = label(args) if callable(label) else label
                spent[key] = spent.get(key, 0.0) + time.thread_time() - started
        setattr(owner, name, wrapper)

    timed(wire.Unary, "__call__", lambda args: "gRPC " + args[0].method.rsplit("/", 1)[1])
    for owner, name, label in (
            (wire.Creates, "encode", "encode"), (wire.Creates, "send", "send"),
            (wire.Publish, "__call__", "publish"),
            (firestore.FirestoreJobStore, "create", "create"), (log, "event", "log lines"),
            (api, "authenticate", "authentication"), (api, "read_json", "reading the body"),
            (api, "parse_job_request", "validating it"), (api, "admit", "admission"),
            (api, "json_response", "the answer")):
        timed(owner, name, label)
    token = emulator_id_token("bench-parts-steps", os.environ["GOOGLE_CLOUD_PROJECT"])

    def call(method: str, path: str, body: bytes = b"") -> str:
        return wsgi_call(app, method, path, body, token)

    def post(i: int) -> str:
        return call("POST", "/v1/jobs", json.dumps({"kind": "image", "prompt": f"s {i}"}).encode())

    for i in range(min(200, requests)):  # unrecorded
        assert post(i) == "202" and call("GET", "/healthz") == "200"
    spent.clear()
    started = time.thread_time()
    for i in range(requests):
        post(1000 + i)
    whole = (time.thread_time() - started) / requests * 1000
    steps = {key: seconds / requests * 1000 for key, seconds in spent.items()}
    started = time.thread_time()
    for _ in range(requests):
        call("GET", "/healthz")
    healthz = (time.thread_time() - started) / requests * 1000
    grpc_ms = steps.get("gRPC Commit", 0.0) + steps.get("gRPC Publish", 0.0)
    kiln = {
        # (the store encodes a job's writes, then sends them through its group commit)
        "building the commit": steps["encode"] + steps["send"] - steps.get("gRPC Commit", 0.0),
        "the job's documents": steps["create"] - steps["encode"] - steps["send"],
        "building the publish": steps["publish"] - steps.get("gRPC Publish", 0.0),
        **{key: steps.get(key, 0.0) for key in ("log lines", "authentication",
                                                 "reading the body", "validating it",
                                                 "admission", "the answer")}}
    lines = [f"an accepted request's thread CPU in process (no HTTP; {requests} requests):",
             f"  whole request         {whole:.2f} ms (GET /healthz: {healthz:.2f} ms)",
             f"  the two gRPC calls    {grpc_ms:.2f} ms (this thread only)"]
    lines += [f"  {key:<21} {ms:.2f} ms" for key, ms in kiln.items()]
    lines.append(f"  the rest              {whole - grpc_ms - sum(kiln.values()):.2f} ms "
                 "(Flask, functions-framework, routing, building the job)")
    return lines


def _ingress_app() -> Any:
    """The stack's ingress as functions-framework serves it (``kiln_dev/functions.py``),
    to be called in this process."""
    import functions_framework

    return functions_framework.create_app(
        target="ingress", source=str(Path(__file__).with_name("functions.py")),
        signature_type="http")


def wsgi_call(app: Any, method: str, path: str, body: bytes, token: str) -> str:
    """Call a WSGI app directly, as gunicorn would (no socket, no HTTP parsing): the
    status code, as text."""
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)), "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_HOST": "127.0.0.1:8080", "REMOTE_ADDR": "127.0.0.1"}
    b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return status[0][:3]


def _app_here(target: str, requests: int) -> float:
    """The CPU of this whole process (every thread) per accepted ``POST /v1/jobs``, in ms,
    with ``target``'s WSGI app called directly: Kiln's functions-framework app (the
    stack's ingress) or the peer's Flask app. 200 unrecorded requests first."""
    if target == "kiln":
        app = _ingress_app()
        token = emulator_id_token(f"parts-app-{uuid.uuid4().hex[:8]}",
                                  os.environ["GOOGLE_CLOUD_PROJECT"])
    else:
        from kiln_dev.bench_peer import app
        token = "peer"  # the peer checks only that a bearer token is there

    def post(i: int) -> None:
        body = json.dumps({"kind": "image", "prompt": f"in process {i}"}).encode()
        assert wsgi_call(app, "POST", "/v1/jobs", body, token) == "202"

    for i in range(200):
        post(i)
    started = time.process_time()
    for i in range(requests):
        post(i)
    return (time.process_time() - started) / requests * 1000


def apps_alone(stack: LocalStack, peer_redis_url: str, requests: int,
               rounds: int) -> list[str]:
    """:func:`_app_here` for Kiln and the peer, each round a fresh child process per
    target (the order alternating), Kiln's with the ingress's environment (its gRPC
    client path included), the peer's with its Redis."""
    from kiln.settings import INGRESS_GRPC_EXPERIMENTS

    env = {"kiln": {**os.environ, **stack.function_env(), "KILN_OFFLINE_IMAGE_SECONDS": "0",
                    "GRPC_EXPERIMENTS": INGRESS_GRPC_EXPERIMENTS},
           "peer": {**os.environ, "KILN_PEER_REDIS_URL": peer_redis_url}}
    per: dict[str, list[float]] = {"kiln": [], "peer": []}
    for n in range(rounds):
        for target in sorted(per, reverse=n % 2 == 1):
            said = _child(f"the {target} app in process", env[target], "--app-here", target,
                          "--requests", str(requests))
            per[target].append(float(said.split()[-1]))
    return apps_table(per, requests)


#: How long :func:`slower_redis`'s proxies hold each of Redis's answers, in ms.
REDIS_DELAYS = (0, 1, 2)


def slower_redis(redis_port: int, requests: int, rounds: int) -> list[str]:
    """The peer's app alone (:func:`_app_here`) on its Redis directly and through a proxy
    (``kiln_dev.delay_proxy``) in another process that holds each of Redis's answers
    ``REDIS_DELAYS`` ms, taking turns (the order alternating each round): the CPU of the
    app's process per request."""
    proxies = {delay: subprocess.Popen(
        [sys.executable, "-m", "kiln_dev.delay_proxy", str(redis_port), str(delay),
         "--until-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for delay in REDIS_DELAYS}
    try:
        ports = {"directly": redis_port}
        for delay, proxy in proxies.items():
            assert proxy.stdout is not None
            ports[f"answers held {delay} ms"] = int(proxy.stdout.readline())
        per: dict[str, list[float]] = {name: [] for name in ports}
        for n in range(rounds):
            for name in sorted(ports, reverse=n % 2 == 1):
                env = {**os.environ, "KILN_PEER_REDIS_URL": f"redis://127.0.0.1:{ports[name]}/0"}
                said = _child(f"the peer app ({name})", env, "--app-here", "peer",
                              "--requests", str(requests))
                per[name].append(float(said.split()[-1]))
    finally:
        for proxy in proxies.values():
            _end(proxy)
    lines = ["the peer's app alone with a slower Redis (CPU of the app's process per request, "
             f"median of {rounds} × {requests}):"]
    lines += [f"  Redis {name:<20} {median(values):.2f} ms" for name, values in per.items()]
    return lines


def apps_table(per: dict[str, list[float]], requests: int) -> list[str]:
    """The in-process comparison's lines: medians over the rounds, in ms per request."""
    kiln, peer = median(per["kiln"]), median(per["peer"])
    rounds = len(per["kiln"])
    return [f"the app alone, called in process (no HTTP, no gunicorn; CPU of the whole "
            f"process per request, median of {rounds} × {requests}):",
            f"  kiln {kiln:.2f} ms, peer {peer:.2f} ms ({kiln / peer:.2f}×)"]


def _end(child: subprocess.Popen[str]) -> None:
    """Stop a helper that serves until its stdin closes (killed if it takes over 10 s)."""
    assert child.stdin is not None
    child.stdin.close()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()


#: How long the sleeping servers of :func:`waking` take to answer, in ms.
WAKE_DELAYS = (0, 2, 5)
_SLEEP_METHOD = "/kiln.bench.Sleep/Sleep"


def waking(calls: int, rounds: int) -> list[str]:
    """:func:`_waking_here` in a child process on the ingress's gRPC client path."""
    from kiln.settings import INGRESS_GRPC_EXPERIMENTS

    env = {**os.environ, "GRPC_EXPERIMENTS": INGRESS_GRPC_EXPERIMENTS}
    return _child("the waking part", env, "--waking-here", str(calls), "--rounds",
                  str(rounds), timeout=600).splitlines()


def _waking_here(calls: int, rounds: int) -> list[str]:
    """This process's CPU per call, by how long the answer takes: a unary gRPC call and a
    socket round trip, to :func:`_sleep_servers` in a child process, taking turns (the
    order alternating each round), ``calls`` calls per turn after 20 unrecorded."""
    import grpc

    servers = subprocess.Popen([sys.executable, "-m", "kiln_dev.bench_parts",
                                "--sleep-servers"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert servers.stdin is not None and servers.stdout is not None
    try:
        grpc_port, socket_port = (int(port) for port in servers.stdout.readline().split())
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        sleep = channel.unary_unary(_SLEEP_METHOD)  # bytes in, bytes out
        sock = socket.create_connection(("127.0.0.1", socket_port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = sock.makefile("rb")

        def by_grpc(delay: int) -> None:
            sleep(b"%d" % delay, timeout=10)

        def by_socket(delay: int) -> None:
            sock.sendall(b"%d\n" % delay)
            if answers.readline() != b"ok\n":
                raise ConnectionError("the sleeping socket server did not answer")

        kinds: list[tuple[str, Callable[[int], None]]] = [("gRPC", by_grpc),
                                                           ("socket", by_socket)]
        per: dict[tuple[str, int], list[float]] = {}
        for _, call in kinds:
            for delay in WAKE_DELAYS:
                for _ in range(20):
                    call(delay)
        for n in range(rounds):
            for delay in WAKE_DELAYS:
                for kind, call in (kinds if n % 2 == 0 else kinds[::-1]):
                    started = time.process_time()
                    for _ in range(calls):
                        call(delay)
                    spent = (time.process_time() - started) / calls * 1000
                    per.setdefault((kind, delay), []).append(spent)
        sock.close()
        channel.close()
    finally:
        _end(servers)
    lines = ["a call's CPU in the caller by how long its answer takes (the ingress's gRPC "
             f"path; the servers in another process; median of {rounds} × {calls}):"]
    lines += [f"  answered after {delay} ms: gRPC {median(per['gRPC', delay]):.3f} ms, "
              f"socket round trip {median(per['socket', delay]):.3f} ms"
              for delay in WAKE_DELAYS]
    return lines


def _sleep_servers() -> None:
    """A gRPC server and a line-based socket server on 127.0.0.1 that answer after
    sleeping the milliseconds each request names; prints their ports, then serves until
    stdin closes."""
    from concurrent import futures

    import grpc

    def answer(request: bytes, context: Any) -> bytes:
        time.sleep(int(request) / 1000)
        return b"ok"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        _SLEEP_METHOD.split("/")[1], {"Sleep": grpc.unary_unary_rpc_method_handler(answer)}),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                time.sleep(int(line) / 1000)
                conn.sendall(b"ok\n")

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(grpc_port, listener.getsockname()[1], flush=True)
    sys.stdin.read()
    server.stop(0)
    listener.close()


def transactions(stack: LocalStack, jobs: int, rounds: int) -> list[str]:
    store = stack.services().store
    policy = stack.settings().retry_policy()

    def job() -> str:
        new = lifecycle.new_job(job_id=uuid.uuid4().hex[:20], uid="parts", channel="app",
                                now=dt.datetime.now(dt.UTC), policy=policy,
                                request=parse_job_request({"kind": "image", "prompt": "x"}))
        store.create(new)
        return new.id

    def decide(_: object) -> tuple[Change, bool]:
        return Change({"stage": "parts", "updatedAt": sentinels.SERVER_TIME},
                      {"checks": sentinels.Increment(1)}), True

    took: dict[str, list[tuple[float, float]]] = {"transaction": [], "written on a read": []}
    for _ in range(rounds):
        for way in took:
            ids = [job() for _ in range(jobs)]
            cpu, wall = time.process_time(), time.perf_counter()
            for job_id in ids:
                if way == "transaction":
                    store.transact(job_id, decide)
                else:
                    store.transact(job_id, decide, seen=store.get(job_id))
            took[way].append(((time.perf_counter() - wall) / jobs * 1000,
                              (time.process_time() - cpu) / jobs * 1000))
    return [f"a change of both documents of a job (median of {rounds} × {jobs}):"] + [
        f"  {way:<18} {median(w for w, _ in v):.2f} ms, client CPU {median(c for _, c in v):.2f} ms"
        for way, v in took.items()]


def relay_streams(stack: LocalStack, messages: int, rounds: int) -> list[str]:
    took: dict[int, list[float]] = {4: [], 8: [], 12: []}
    for n in range(rounds):
        for streams in took:
            took[streams] += [seconds * 1000 for seconds in push_floor(
                stack, messages, name=f"parts-{streams}-{n}", streams=streams, stagger=0.013)]
    return [f"publish → push received through the relay ({rounds} × {messages} messages):"] + [
        f"  {streams:>2} streams: p50 {median(v):.1f} ms, p90 {percentile(v, 90):.1f} ms, "
        f"max {max(v):.1f} ms" for streams, v in took.items()]


def queue_pass(stack: LocalStack, sizes: tuple[int, ...], calls: int,
               rounds: int) -> list[str]:
    """The Firestore emulator's CPU per queue pass and per waiting count, with ``sizes``
    ended jobs added to ``jobs`` in turn: through the ``waitingJobs`` index (what Kiln
    runs) and over ``jobs`` (what it ran before), median of ``rounds`` × ``calls``."""
    from google.cloud import firestore

    from kiln.adapters.firestore import JOBS, waiting_over_jobs
    from kiln.adapters.firestore_queue import FirestoreCounters
    from kiln.runtime.dispatch import PROVIDER_CAPACITY, SCAN_LIMIT

    services = stack.services()
    store, client = services.store, services.firestore
    emulator = [stack.procs["firestore"].pid]
    pending = firestore.FieldFilter("status", "==", "pending")
    ways: dict[str, Callable[[], object]] = {
        "pass, index": lambda: store.find(status="pending", waiting=True, limit=SCAN_LIMIT),
        "pass, over jobs": lambda: list(waiting_over_jobs(client).limit(SCAN_LIMIT).stream()),
        "count, index": lambda: FirestoreCounters(client).waiting(PROVIDER_CAPACITY),
        "count, over jobs": lambda: client.collection(JOBS).where(filter=pending).where(
            filter=firestore.FieldFilter("queueReason", "==", PROVIDER_CAPACITY))
            .count().get()}
    lines = [f"the Firestore emulator's CPU per queue pass and per waiting count, by ended "
             f"jobs added (median of {rounds} × {calls}):"]
    added = 0
    for size in sizes:
        while added < size:
            batch = client.batch()
            for _ in range(min(400, size - added)):
                batch.set(client.collection(JOBS).document(f"parts-ended-{uuid.uuid4().hex}"),
                          {"status": "completed", "uid": "parts", "queueReason": None})
                added += 1
            batch.commit()
        spent: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                before = cpu_seconds(emulator)
                for _ in range(calls):
                    way()
                spent[name].append((cpu_seconds(emulator) - before) / calls * 1000)
        lines.append(f"  {size:>6} jobs: " + ", ".join(
            f"{name} {median(v):.1f} ms" for name, v in spent.items()))
    return lines


#: Shared objects grouped as the ``--libraries`` part reports them, first match wins.
LIBRARIES = (("Python interpreter", re.compile(r"^(libpython|python3)")),
             ("kernel", re.compile(r"^\[kernel")),
             ("gRPC core", re.compile(r"^cygrpc")),
             ("protobuf", re.compile(r"^_message|^_upb")),
             ("C libraries", re.compile(r"^(libc|ld-linux|libstdc\+\+|libm|libpthread)[.-]")))


def by_library(report: str) -> dict[str, float]:
    """Each library group's share (0–1) of the samples in a ``perf report --sort dso
    --stdio -q -F sample,dso`` listing; what matches no group is ``other``."""
    counts = {name: 0 for name, _ in LIBRARIES} | {"other": 0}
    for line in report.splitlines():
        fields = line.split(None, 1)
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        dso = os.path.basename(fields[1].strip())
        group = next((name for name, pattern in LIBRARIES if pattern.search(dso)), "other")
        counts[group] += int(fields[0])
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()} if total else {}


def sampled(pid: int, run: Callable[[], int]) -> tuple[float, dict[str, float]]:
    """``run()`` (which returns how many requests it made) while ``perf record`` samples
    ``pid``: its CPU per request in ms, and that CPU's split by library."""
    with tempfile.TemporaryDirectory(prefix="kiln-perf-") as tmp:
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-o", data, "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # perf attaches before the first request
            if perf.poll() is not None:  # refused at once (perf_event_paranoid, seccomp)
                raise RuntimeError(f"perf record failed: {_said(perf)}")
            before = _cpu(pid)
            requests = run()
            ms = (_cpu(pid) - before) / requests * 1000
        finally:
            if perf.poll() is None:
                perf.send_signal(signal.SIGINT)  # perf writes its data and exits
                try:
                    perf.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    perf.kill()
                    raise
        if perf.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"perf record failed: {_said(perf)}")
        report = subprocess.run(["perf", "report", "-i", data, "--sort", "dso", "--stdio", "-q",
                                 "-F", "sample,dso"], capture_output=True, text=True, timeout=120,
                                check=True).stdout
    return ms, by_library(report)


def _said(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode(errors="replace")[-500:]


def missing_tools() -> list[str]:
    """The ``--libraries`` part's tools that are not installed."""
    return [tool for tool in ("perf", "redis-server") if shutil.which(tool) is None]


def libraries(stack: LocalStack, requests: int, rounds: int) -> list[str]:
    """Kiln's ingress and the peer's, one client, taking turns (the order alternates each
    round, so what one leaves the emulators falls on each alike): CPU per request by
    library; then the same turns without ``perf`` (:func:`served`) and each app alone
    (:func:`apps_alone`)."""
    from kiln_dev.bench_peer import PeerStack

    token = emulator_id_token("parts-libraries", stack.config.project)
    assert stack.relay is not None
    stack.relay.hold()  # Kiln's worker runs none of these jobs meanwhile (as make bench)
    with PeerStack(threads=stack.config.ingress_threads) as peer:
        targets = {"kiln": (stack.ingress_url, stack.worker_processes("ingress")[0]),
                   "peer": (peer.url, procfs.live_children(peer.procs["gunicorn"].pid)[0])}
        per: dict[str, list[tuple[float, dict[str, float]]]] = {t: [] for t in targets}
        for n in range(rounds + 1):  # the first round warms both: not recorded
            for target in sorted(targets, reverse=n % 2 == 1):
                url, pid = targets[target]
                with job_poster(url, token, 1, "libraries") as post:
                    def run(post: Callable[[int], None] = post) -> int:
                        for i in range(requests):
                            post(i)
                        return requests
                    result = sampled(pid, run)
                if n:
                    per[target].append(result)
        without_perf = served(targets, token, requests, rounds)
        alone = apps_alone(stack, peer.redis_url, requests, rounds)
        slower = slower_redis(peer.redis_port, requests, rounds)
    return library_table(per, rounds, requests) + without_perf + alone + slower


#: The levels ``served`` measures: one client, where no request shares a call, and 16.
SERVED_LEVELS = (1, 16)


def served(targets: dict[str, tuple[str, int]], token: str, requests: int,
           rounds: int) -> list[str]:
    """Each gunicorn worker's CPU per accepted request with no ``perf`` attached, at each
    of ``SERVED_LEVELS`` (a closed loop; the order alternating each round, the first
    round not recorded)."""
    per: dict[tuple[str, int], list[float]] = {(t, c): [] for t in targets
                                               for c in SERVED_LEVELS}
    for n in range(rounds + 1):
        for concurrency in SERVED_LEVELS:
            for target in sorted(targets, reverse=n % 2 == 1):
                url, pid = targets[target]
                with job_poster(url, token, concurrency, "served") as post:
                    _, ms = metered_loop(post, requests, concurrency,
                                         functools.partial(_cpu, pid))
                if n:
                    per[(target, concurrency)].append(ms)
    return served_table(per, requests)


def served_table(per: dict[tuple[str, int], list[float]], requests: int) -> list[str]:
    """The ``served`` lines: medians over the rounds, in ms per request, by level."""
    rounds = len(next(iter(per.values())))
    lines = [f"served, without perf (the gunicorn worker's CPU per request from /proc, "
             f"median of {rounds} × {requests}):"]
    for concurrency in sorted({c for _, c in per}):
        kiln, peer = median(per[("kiln", concurrency)]), median(per[("peer", concurrency)])
        lines.append(f"  {concurrency:>2} client(s): kiln {kiln:.2f} ms, peer {peer:.2f} ms "
                     f"({kiln / peer:.2f}×)")
    return lines


def library_table(per: dict[str, list[tuple[float, dict[str, float]]]], rounds: int,
                  requests: int) -> list[str]:
    """The ``--libraries`` part's lines: medians over the rounds, in ms per request."""
    lines = [f"ingress CPU per request by library (perf record, 1 client, median of "
             f"{rounds} × {requests}; ms; each cell its own median, so a column need not add "
             "up to its whole):",
             f"  {'':<20} {'kiln':>6} {'peer':>6}"]
    groups = [name for name, _ in LIBRARIES] + ["other"]
    totals = {t: median(ms for ms, _ in runs) for t, runs in per.items()}
    for group in groups:
        cells = [median(ms * split.get(group, 0.0) for ms, split in per[t]) for t in ("kiln", "peer")]
        lines.append(f"  {group:<20} {cells[0]:>6.2f} {cells[1]:>6.2f}")
    lines.append(f"  {'whole worker':<20} {totals['kiln']:>6.2f} {totals['peer']:>6.2f}"
                 f"   ({totals['kiln'] / totals['peer']:.2f}×)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench_parts", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-emulators", type=int, default=5000, metavar="N",
                        help="commits and publishes that warm the emulators first (0: none)")
    parser.add_argument("--libraries", action="store_true",
                        help="only the ingress's CPU by library against the peer's (perf)")
    parser.add_argument("--steps-here", type=int, help=argparse.SUPPRESS)  # the children
    parser.add_argument("--app-here", choices=("kiln", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--waking-here", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sleep-servers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sleep_servers:
        _sleep_servers()
        return 0
    if args.waking_here:
        print("\n".join(_waking_here(args.waking_here, args.rounds)), flush=True)
        return 0
    if args.steps_here:
        print("\n".join(_steps_here(args.steps_here)), flush=True)
        return 0
    if args.app_here:
        print(f"{_app_here(args.app_here, args.requests):.4f}", flush=True)
        return 0
    missing = missing_tools() if args.libraries else []
    if missing:
        print(f"ingress CPU by library: not measured, {' and '.join(missing)} not "
              "installed (apt-get install -y linux-perf redis-server)", file=sys.stderr)
        return 2
    # The parts hold the worker off while they send, so the jobs wait; thousands of them
    # would pass the default admission cap (KILN_MAX_WAITING), which is not measured here.
    config = StackConfig(env={"KILN_OFFLINE_IMAGE_SECONDS": "0", "KILN_MAX_WAITING": "100000"},
                         sweep_interval=0, push_relay=8, ingress_threads=16)
    with LocalStack(config) as stack:
        if args.warm_emulators:
            warm_emulators(stack, args.warm_emulators)
        parts: list[Callable[[], list[str]]] = [
            lambda: ingress_cpu(stack, 300, args.rounds),
            lambda: client_cost(stack, 300, args.rounds), lambda: request_steps(stack, 1000),
            lambda: transactions(stack, 100, args.rounds),
            lambda: relay_streams(stack, 40, args.rounds), lambda: waking(300, args.rounds),
            lambda: queue_pass(stack, (1000, 4000, 8000), 10, args.rounds)]
        if args.libraries:
            parts = [lambda: libraries(stack, 500, args.rounds)]
        for part in parts:
            print("\n".join(part()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
