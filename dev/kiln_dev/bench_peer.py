"""The self-hosted peer ``make bench`` measures Kiln against: Flask + Celery + Redis.

What a team would write instead of Kiln for the same job: ``POST /v1/jobs`` (a Flask
endpoint under gunicorn with the ingress's threads) validates the request, stores the
job record in Redis (AOF on, fsync every second) and enqueues a Celery task; a Celery
prefork worker marks the record completed (generation 0 s) and publishes its id on
``jobs:done``, which the benchmark listens to as an app listens to Firestore.

``PeerStack`` starts and stops redis-server (OS package), gunicorn and the Celery worker,
each in a session of its own (``pgids()`` for the meters). gunicorn and celery load this
module by name (``kiln_dev.bench_peer:app``, ``-A kiln_dev.bench_peer:celery``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import flask
import httpx
import redis
from celery import Celery

from kiln_dev.stack import free_port

REDIS_URL = os.environ.get("KILN_PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
DONE_CHANNEL = "jobs:done"

celery = Celery("kiln_peer", broker=REDIS_URL)
celery.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4,
                   broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
_redis = redis.Redis.from_url(REDIS_URL)
app = flask.Flask("kiln_peer")


@celery.task(name="generate")
def generate(job_id: str) -> None:
    """The job: nothing to generate; mark it completed and tell listeners."""
    now = repr(time.time())
    pipe = _redis.pipeline()
    pipe.hset(f"job:{job_id}", mapping={"status": "completed", "completedAt": now})
    pipe.incr("jobs:completed")
    pipe.publish(DONE_CHANNEL, job_id)
    pipe.execute()


@app.post("/v1/jobs")
def submit() -> Any:
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("kind") not in ("image", "model") \
            or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        return {"error": {"code": "invalid_request", "message": "kind and prompt"}}, 400
    if not flask.request.headers.get("Authorization", "").startswith("Bearer "):
        return {"error": {"code": "unauthenticated", "message": "sign in"}}, 401
    job_id = uuid.uuid4().hex
    _redis.hset(f"job:{job_id}", mapping={"kind": body["kind"], "prompt": body["prompt"],
                                         "status": "pending", "createdAt": repr(time.time())})
    generate.delay(job_id)
    return {"jobId": job_id, "status": "pending"}, 202


@app.get("/healthz")
def healthz() -> Any:
    return {"ok": True}


#: The part name of the proxy that holds Redis's answers (``PeerStack(redis_hold_ms=…)``).
PROXY = "redis-proxy"


class PeerStack:
    """redis-server + gunicorn (``threads`` threads) + a Celery prefork worker.

    ``redis_hold_ms`` > 0 puts a proxy (``kiln_dev.delay_proxy``, a session of its own,
    outside ``pgids()``) between gunicorn and Celery and Redis that holds each of Redis's
    answers that long: the peer on a backend as far away as Kiln's. The benchmark's own
    client (``client()``, ``redis_url``) talks to Redis directly."""

    def __init__(self, *, threads: int, concurrency: int = 2, host: str = "127.0.0.1",
                 redis_hold_ms: float = 0.0) -> None:
        self.host, self.threads, self.concurrency = host, threads, concurrency
        self.redis_hold_ms = redis_hold_ms
        self.redis_port, self.http_port = free_port(host), free_port(host)
        self.proxy_port = free_port(host) if redis_hold_ms > 0 else self.redis_port
        self.workdir = Path(tempfile.mkdtemp(prefix="kiln-peer-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def app_redis_url(self) -> str:
        """Redis as gunicorn and Celery reach it: through the proxy when answers are held."""
        return f"redis://{self.host}:{self.proxy_port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def __enter__(self) -> PeerStack:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        env = {**os.environ, "KILN_PEER_REDIS_URL": self.app_redis_url, "PYTHONUNBUFFERED": "1"}
        try:
            self._spawn("redis", [server, "--port", str(self.redis_port), "--bind", self.host,
                                  "--dir", str(self.workdir), "--save", "",
                                  "--appendonly", "yes", "--appendfsync", "everysec"], env)
            self._wait(lambda: bool(self.client().ping()), "redis")
            if self.redis_hold_ms > 0:
                self._spawn(PROXY, [sys.executable, "-m", "kiln_dev.delay_proxy",
                                    str(self.redis_port), str(self.redis_hold_ms),
                                    "--port", str(self.proxy_port)], env)
                self._wait(lambda: bool(redis.Redis.from_url(self.app_redis_url).ping()), PROXY)
            self._spawn("gunicorn", [sys.executable, "-m", "gunicorn", "--bind",
                                     f"{self.host}:{self.http_port}", "--workers", "1",
                                     "--threads", str(self.threads), "--log-level", "error",
                                     "kiln_dev.bench_peer:app"], env)
            self._wait(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
                       "gunicorn")
            self._spawn("celery", [sys.executable, "-m", "celery", "-A", "kiln_dev.bench_peer:celery",
                                   "worker", "--pool", "prefork", "--concurrency",
                                   str(self.concurrency), "--loglevel", "WARNING",
                                   "--without-gossip", "--without-mingle",
                                   "--without-heartbeat"], env)
            self._wait(self._worker_ready, "celery", timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _worker_ready(self) -> bool:
        ping = self.client()
        probe = uuid.uuid4().hex
        with ping.pubsub() as sub:
            sub.subscribe(DONE_CHANNEL)
            sub.get_message(timeout=1)
            Celery("probe", broker=self.app_redis_url).send_task("generate", args=[probe])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                message = sub.get_message(timeout=1)
                if message and message.get("data") == probe.encode():
                    return True
        return False

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            cwd=self.workdir, start_new_session=True)
        log.close()

    def _wait(self, probe: Any, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.workdir / name}.log")
            with contextlib.suppress(Exception):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {self.workdir / name}.log")
            time.sleep(0.1)

    def pgids(self, *names: str) -> list[int]:
        """The process groups of the parts named (none named: the peer's own, every part
        but the proxy, which stands in for a network)."""
        return [proc.pid for name, proc in self.procs.items()
                if name in names or (not names and name != PROXY)]

    def completed(self) -> int:
        return int(self.client().get("jobs:completed") or 0)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
