"""``make bench-parts``: the measurements behind ``make bench``'s numbers, one part at a
time, on the local stack's emulators (docs/benchmarks.md, "Where the time goes").

- **ingress CPU by request kind**: the ingress's gunicorn worker process, per request, for
  ``GET /healthz`` (HTTP, functions-framework, Flask, Kiln's router), a ``POST /v1/jobs``
  refused with 400, and an accepted one, split into the threads that handle requests
  and gRPC's EventEngine threads (``/proc/<pid>/task``).
- **a transaction against a write on a read**: ``JobStore.transact`` as a transaction
  (begin, read, commit) and with ``seen`` (a plain read, then a commit conditioned on
  both documents' update times), interleaved.
- **push relay streams**: publish → a bare HTTP endpoint through ``PushRelay`` with 4, 8
  and 12 pull streams (the emulator's pull loop sleeps 50 ms between looks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
import uuid

import grpc
import httpx
from google.pubsub_v1 import PubsubMessage, SubscriberClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core import lifecycle, sentinels
from kiln.core.job import Change
from kiln.core.requests import parse_job_request
from kiln_dev.bench_e2e import _publisher, _PushSink
from kiln_dev.bench_load import median, percentile
from kiln_dev.pusher import PushRelay
from kiln_dev.stack import LocalStack, StackConfig

_TICKS = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[tuple[str, str], float]:
    """(thread id, name) → CPU seconds so far, of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()  # noqa: SIM115
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[(tid, name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def _gunicorn_worker(arbiter: int) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == arbiter:
            return int(pid)
    return arbiter


def ingress_cpu(stack: LocalStack, requests: int, rounds: int) -> list[str]:
    worker = _gunicorn_worker(stack.procs["ingress"].pid)
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
        lines.append(f"  {kind:<9} {total:.2f} ms  (gRPC EventEngine threads {grpc_ms:.2f} ms)")
    return lines


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
    host = f"{stack.config.host}:{stack.config.pubsub_port}"
    publisher = _publisher(stack)
    subscriber = SubscriberClient(transport=SubscriberGrpcTransport(
        channel=grpc.insecure_channel(host)))
    project = stack.config.project
    took: dict[int, list[float]] = {4: [], 8: [], 12: []}
    for n in range(rounds):
        for streams in took:
            sink = _PushSink()
            name = f"parts-{streams}-{n}-{uuid.uuid4().hex[:6]}"
            topic = publisher.topic_path(project, name)
            publisher.create_topic(name=topic)
            subscription = subscriber.subscription_path(project, name)
            subscriber.create_subscription(request={"name": subscription, "topic": topic,
                                                    "ack_deadline_seconds": 60})
            relay = PushRelay(host, subscription, sink.url, concurrency=8,
                              streams=streams).start()
            try:
                for i in range(messages):
                    started = time.perf_counter()
                    publisher.publish(topic=topic, timeout=3, messages=[
                        PubsubMessage(data=b"{}", attributes={"jobId": f"m{i}"})])
                    took[streams].append((sink.wait(f"m{i}") - started) * 1000)
                    time.sleep(0.013 * (i % 4))  # publishes at varied moments of a poll
            finally:
                relay.stop()
                sink.server.shutdown()
    return [f"publish → push received through the relay ({rounds} × {messages} messages):"] + [
        f"  {streams:>2} streams: p50 {median(v):.1f} ms, p90 {percentile(v, 90):.1f} ms, "
        f"max {max(v):.1f} ms" for streams, v in took.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench_parts", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = StackConfig(env={"KILN_OFFLINE_IMAGE_SECONDS": "0"}, sweep_interval=0,
                         push_relay=8, ingress_threads=16)
    with LocalStack(config) as stack:
        for part in (ingress_cpu(stack, 300, args.rounds), transactions(stack, 100, args.rounds),
                     relay_streams(stack, 40, args.rounds)):
            print("\n".join(part), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
