"""Parts of ``make bench`` beside the load runs: Kiln's floor, sequential end-to-end jobs
with the push delivery's own floor, and the ingress's cold start."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from google.pubsub_v1 import PubsubMessage

from kiln.adapters.firestore import FirestoreJobStore, _fields
from kiln.adapters.pubsub import encode_message
from kiln.core import lifecycle
from kiln.core.job import new_job_id
from kiln.core.requests import parse_job_request
from kiln_dev.bench_load import closed_loop
from kiln_dev.bench_peer import DONE_CHANNEL, PeerStack
from kiln_dev.pusher import STREAMS, PushRelay
from kiln_dev.stack import LocalStack, free_port

#: Where the emulators' warm-up writes and publishes (nothing of Kiln's reads them).
WARMUP = "kiln-bench-warmup"


def warm_emulators(stack: LocalStack, pairs: int, *, threads: int = 16) -> float:
    """Warm the Java emulators' JITs before anything is measured: ``pairs`` commits of a
    job's two documents, each followed by a publish of its message, from ``threads``
    threads (``bench_load.closed_loop``). The commits write over the same ``threads``
    pairs of documents in turn, so the Firestore emulator's data does not grow (it slows
    as it grows); the messages go to a topic and a subscription of their own, deleted
    after. Returns the seconds it took."""
    services = stack.services()
    client, publisher, subscriber = (services.firestore, stack.pubsub_publisher(),
                                      stack.pubsub_subscriber())
    topic = publisher.topic_path(stack.config.project, WARMUP)
    subscription = subscriber.subscription_path(stack.config.project, WARMUP)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    new = lifecycle.new_job(job_id=new_job_id("bench-warmup"), uid="bench-warmup",
                            channel="app", request=parse_job_request(
                                {"kind": "image", "prompt": "warm-up"}),
                            now=services.clock.now(), policy=services.policy)
    doc, server = _fields(new.doc), _fields(new.server)
    data, attributes = encode_message(new.id)

    def warm(i: int) -> None:
        ref = client.collection(WARMUP).document(f"w{i % threads}")
        batch = client.batch()
        batch.set(ref, doc)
        batch.set(ref.collection("private").document("server"), server)
        batch.commit()
        publisher.publish(topic=topic, messages=[
            PubsubMessage(data=data, attributes=attributes)], timeout=10)

    try:
        run = closed_loop(warm, pairs, threads, warmup=0)
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic)
        publisher.transport.close()
        subscriber.transport.close()
    return run.wall


class Floor:
    """The acknowledgement's floor: the job's two documents created in one commit and its
    message published, straight from this process (no HTTP, no Kiln adapter above the SDKs)."""

    def __init__(self, stack: LocalStack) -> None:
        self.services = stack.services()
        self.store = FirestoreJobStore(self.services.firestore)
        self.publisher = stack.pubsub_publisher()
        self.topic = self.publisher.topic_path(stack.config.project,
                                               self.services.settings.jobs_topic)

    def accept(self, i: int) -> None:
        request = parse_job_request({"kind": "image", "prompt": f"floor {i}"})
        job_id = new_job_id("bench-floor")
        new = lifecycle.new_job(job_id=job_id, uid="bench-floor", channel="app",
                                request=request, now=self.services.clock.now(),
                                policy=self.services.policy)
        batch = self.store.client.batch()
        batch.create(self.store.ref(job_id), _fields(new.doc))
        batch.create(self.store.server_ref(job_id), _fields(new.server))
        batch.commit()
        data, attributes = encode_message(job_id)
        self.publisher.publish(topic=self.topic, messages=[
            PubsubMessage(data=data, attributes=attributes)], timeout=3)

    def cpu_per_job(self, jobs: int) -> float:
        """CPU seconds this process spends per floor acceptance (its SDK calls alone),
        sequential with nothing else running in it."""
        started = time.process_time()
        for i in range(jobs):
            self.accept(i)
        return (time.process_time() - started) / jobs


class _PushSink:
    """An HTTP endpoint the Pub/Sub emulator pushes to; records when each id arrived."""

    def __init__(self) -> None:
        arrived: dict[str, float] = {}
        self.arrived, self.event = arrived, threading.Condition()
        cond = self.event

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                with cond:
                    arrived[body["message"]["attributes"]["jobId"]] = time.perf_counter()
                    cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def wait(self, key: str, timeout: float = 30) -> float:
        with self.event:
            if not self.event.wait_for(lambda: key in self.arrived, timeout):
                raise TimeoutError(f"push {key} did not arrive")
            return self.arrived[key]


def push_floor(stack: LocalStack, jobs: int, *, name: str = "bench-push-floor",
               streams: int = STREAMS, stagger: float = 0.0) -> list[float]:
    """Seconds from publish to the push arriving at a bare HTTP endpoint, the way the
    stack's worker is pushed to (its push relay, with ``streams`` pull streams, when it has
    one; else the emulator's push), on a topic of its own (``name``, new in the emulator).
    ``stagger``: each publish waits 0–3 × ``stagger`` s after the previous arrival, so the
    publishes fall at varied moments of the emulator's poll."""
    sink = _PushSink()
    publisher, subscriber = stack.pubsub_publisher(), stack.pubsub_subscriber()
    project = stack.config.project
    topic = publisher.topic_path(project, name)
    publisher.create_topic(name=topic)
    name = subscriber.subscription_path(project, name)
    relayed = stack.config.push_relay > 0
    subscriber.create_subscription(request={
        "name": name, "topic": topic, "ack_deadline_seconds": 60,
        "push_config": {} if relayed else {"push_endpoint": sink.url}})
    relay = PushRelay(stack.pubsub_host, name, sink.url, concurrency=stack.config.push_relay,
                      streams=streams).start() if relayed else None
    out = []
    try:
        for i in range(jobs):
            key = f"push-{i}"
            started = time.perf_counter()
            publisher.publish(topic=topic, messages=[
                PubsubMessage(data=b"{}", attributes={"jobId": key})], timeout=3)
            out.append(sink.wait(key) - started)
            time.sleep(stagger * (i % 4))
    finally:
        if relay is not None:
            relay.stop()
        sink.server.shutdown()
        publisher.transport.close()
        subscriber.transport.close()
    return out


#: The steps of a synchronous job's timeline, in order (docs/timeline.md).
STEPS = ("accepted", "published", "delivered", "claimed", "submitted", "generated", "stored",
         "completed", "notified")


def sequential(stack: LocalStack, peer: PeerStack, headers: dict[str, str], jobs: int, *,
               floor: bool = True
               ) -> tuple[dict[str, list[float]], list[float], dict[str, list[float]]]:
    """POST → completed seen by a listener, one job at a time, Kiln and peer alternating;
    Kiln's also without its generation (``kiln-gen``, from each job's timeline), the push
    floor (``floor``: measured after the jobs), and the
    timelines' gaps between consecutive steps (ms)."""
    from kiln_dev.bench import completed

    services = stack.services()
    out: dict[str, list[float]] = {"kiln": [], "peer": [], "kiln-gen": []}
    gaps: dict[str, list[float]] = {f"{a} → {b}": [] for a, b in itertools.pairwise(STEPS)}
    redis = peer.client()
    with httpx.Client(base_url=stack.ingress_url, timeout=30, headers=headers) as kiln, \
            httpx.Client(base_url=peer.url, timeout=30, headers=headers) as other, \
            redis.pubsub() as sub:
        sub.subscribe(DONE_CHANNEL)
        sub.get_message(timeout=1)
        for i in range(jobs):
            started = time.perf_counter()
            job_id = kiln.post("/v1/jobs", json={"kind": "image", "prompt": f"e2e {i}"}).json()[
                "jobId"]
            completed(services, job_id)
            out["kiln"].append(time.perf_counter() - started)
            _timeline_gaps(services, job_id, out, gaps)
            started = time.perf_counter()
            peer_id = other.post("/v1/jobs", json={"kind": "image", "prompt": f"e2e {i}"}).json()[
                "jobId"]
            while True:
                message = sub.get_message(timeout=30)
                if message is None:
                    raise TimeoutError(f"peer job {peer_id} did not complete")
                if message.get("data") == peer_id.encode():
                    break
            out["peer"].append(time.perf_counter() - started)
    return out, push_floor(stack, jobs) if floor else [], gaps


def _timeline_gaps(services: Any, job_id: str, out: dict[str, list[float]],
                   gaps: dict[str, list[float]]) -> None:
    at: dict[str, Any] = {}
    deadline = time.monotonic() + 5  # the notification record lands just after `completed`
    while "notified" not in at and time.monotonic() < deadline:
        job = services.store.get(job_id)
        at = dict((job.server.timeline or {}) if job is not None else {})
        if "notified" not in at:
            time.sleep(0.02)
    if "submitted" in at and "generated" in at:
        generation = (at["generated"] - at["submitted"]).total_seconds()
        out["kiln-gen"].append(out["kiln"][-1] - generation)
    for a, b in itertools.pairwise(STEPS):
        if a in at and b in at:
            gaps[f"{a} → {b}"].append((at[b] - at[a]).total_seconds() * 1000)


def cold_start(stack: LocalStack, timeout: float = 60) -> float:
    """Seconds from starting a fresh ingress process (as the stack runs it) to its first 202."""
    spec = stack._specs["ingress"]
    port = free_port()
    cmd = [*spec["cmd"][:-1], str(port)]  # the same command on another port
    token = headers_token(stack)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=spec["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.TransportError):
                response = httpx.post(f"http://{stack.config.host}:{port}/v1/jobs", timeout=30,
                                      json={"kind": "image", "prompt": "cold start"},
                                      headers={"Authorization": f"Bearer {token}"})
                if response.status_code == 202:
                    return time.perf_counter() - started
            time.sleep(0.005)
        raise TimeoutError("the fresh ingress did not answer 202")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def headers_token(stack: LocalStack) -> str:
    from kiln.adapters.firebase_auth import emulator_id_token

    return emulator_id_token("bench-cold", stack.config.project)
