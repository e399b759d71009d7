"""The local stack: every part of Kiln on one machine, no cloud account.

Starts the Firestore emulator (with ``infra/firestore.rules``), the Pub/Sub emulator,
the Cloud Storage emulator, the Cloud Tasks emulator (``kiln_dev.tasks_emulator``, in
its own venv ``.venv-tasks``: scheduled checks travel through it to Pub/Sub), an
FCM-compatible server, and the ingress and worker functions under functions-framework;
creates the jobs topic and a push subscription from the emulator to the local worker;
runs the sweeper in a loop. Readiness is probed,
never slept for. Ports are picked free unless given, so stacks run side by side.

Every child runs in its own process group and is killed with it on ``stop()``, on
Ctrl-C, on SIGTERM and at interpreter exit, so nothing is left running.

For reliability tests the stack can also break itself: ``kill(name)`` / ``restart(name)``
stop a part with SIGKILL and bring it back on the same port (a restarted Pub/Sub
emulator gets its topics and subscriptions again); ``kill_worker_process()`` kills one
gunicorn worker of the worker function (its arbiter starts another, as a platform
replaces a dead instance); and ``StackConfig.fault_proxies`` puts fault-injecting
proxies (``kiln_dev.faults``) between the functions and Storage, Pub/Sub or Firestore
while the stack's own clients (tests, the sweeper loop) keep the direct way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from kiln_dev import procfs
from kiln_dev.faults import HttpFaultProxy, TcpProxy
from kiln_dev.pusher import PushRelay
from kiln_dev.standins.fcm import FcmServer

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient, SubscriberClient

    from kiln.compose import Services
    from kiln.settings import Settings

REPO = Path(__file__).resolve().parents[2]
#: The Cloud Tasks emulator's interpreter (``make tasks-emulator``: protobuf<5, apart).
TASKS_PYTHON = REPO / ".venv-tasks" / "bin" / "python"
PROJECT = "demo-kiln"  # demo- ids can never reach a real project
#: the parts every stack starts first, in this order
EMULATORS = ("firestore", "pubsub", "storage", "tasks")
_LIVE: weakref.WeakSet[LocalStack] = weakref.WeakSet()


class Companion(Protocol):
    """A stand-in server the stack runs beside the functions (Telegram, a provider, …).

    ``env()`` is merged into the functions' environment, so the code under test finds it.
    """

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def env(self) -> dict[str, str]: ...


def emulator_publisher(host: str) -> PublisherClient:
    """A Pub/Sub publisher on the emulator at ``host`` (``address:port``), given
    explicitly: nothing reads ``PUBSUB_EMULATOR_HOST``, so stacks side by side never
    reach one another's. The SDK's generated client (``google.pubsub_v1``): one call per
    ``publish(topic=…, messages=[…])``, no batching thread. ``transport.close()`` closes
    its channel."""
    import grpc
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host)))


def emulator_subscriber(host: str) -> SubscriberClient:
    """A Pub/Sub subscriber on the emulator at ``host``, as :func:`emulator_publisher`
    (``pull``, ``acknowledge``, ``create_subscription``, …)."""
    import grpc
    from google.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host)))


class StackError(RuntimeError):
    """A part of the local stack did not start; the message says which and where its log is."""


class PartExited(StackError):
    """A part exited before it became ready."""


def wait_until_interrupted() -> None:
    """Block the main thread until a signal ends it (Ctrl-C, or SIGTERM via the stack's
    handler), in short naps: a signal that lands on another thread is seen within 1 s."""
    while True:
        time.sleep(1)


def _any_port(host: str) -> int:
    """A port the kernel finds free now (the socket is closed again at once)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PortPicker:
    """Hands out free ports, never one it has handed out before.

    A port is picked by binding to port 0 and closing the socket, so the kernel can give
    the same number to the next pick: two parts of one stack would then share a port, and
    the faster one would answer the other's readiness probe (seen once: the bench's
    Firestore client reached an HTTP server on the emulator's port). A port taken by
    another process between the pick and the bind is the stack's to notice and move.
    """

    def __init__(self, probe: Callable[[str], int] = _any_port) -> None:
        self._probe = probe
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, host: str = "127.0.0.1") -> int:
        with self._lock:
            while True:
                port = self._probe(host)
                if port not in self._given:
                    self._given.add(port)
                    return port


#: Every port this process picks for a part (stacks, the peer, stand-ins).
free_port = PortPicker()


@dataclass
class StackConfig:
    project: str = PROJECT
    host: str = "127.0.0.1"
    firestore_port: int = 0
    pubsub_port: int = 0
    storage_port: int = 0
    ingress_port: int = 0
    worker_port: int = 0
    fcm_port: int = 0
    tasks_port: int = 0  # the Cloud Tasks gRPC API
    tasks_http_port: int = 0  # its side port: GET / (ready), GET /stats
    tasks_drop_rate: float = 0.0  # fraction of tasks the emulator loses (chaos: lost checks)
    tasks_seed: int | None = None
    sweep_interval: float = 2.0  # 0 turns the local sweeper loop off
    worker_threads: int = 8
    ingress_threads: int = 16  # gunicorn threads of the ingress (THREADS), sized by make bench
    workdir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra KILN_* settings for functions
    companions: list[Companion] = field(default_factory=list)
    startup_timeout: float = 90.0
    worker_processes: int = 1  # gunicorn worker processes of the worker function (WORKERS)
    #: Pushes the worker receives at once through ``kiln_dev.pusher`` (the emulator's own
    #: push loop carries at most 2); 0 keeps the emulator's push subscription.
    push_relay: int = 0
    #: parts the *functions* reach through a fault proxy: "storage" (HTTP, per-request
    #: faults), "pubsub" / "firestore" (TCP, on/off). Tests and the sweeper loop go direct.
    fault_proxies: tuple[str, ...] = ()
    proxy_seed: int | None = None
    #: Emulators of another running stack this one uses at the ports given ("firestore",
    #: "pubsub"): not started, stopped or restarted here. Give this stack a project of its
    #: own: both emulators keep each project's data apart (a test file's stack borrows the
    #: session's warm emulators instead of starting two JVMs of its own).
    borrowed: tuple[str, ...] = ()

LOCAL_PLANS = "free:daily=100000,running=64,priority=0;pro:daily=100000,running=64,priority=10"
DEAD_TOPIC = "kiln-jobs-dead"
DEAD_SUBSCRIPTION = "kiln-jobs-dead-sub"
WORKER_SUBSCRIPTION = "kiln-jobs-worker"


class LocalStack:
    """Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        c = self.config
        #: parts whose port we picked: one taken before the part bound it is picked again
        self._picked: set[str] = set()
        for name in ("firestore", "pubsub", "storage", "tasks", "tasks_http", "ingress",
                     "worker"):
            if getattr(c, f"{name}_port") == 0:
                setattr(c, f"{name}_port", free_port(c.host))
                self._picked.add(name)
        if not set(c.borrowed) <= {"firestore", "pubsub"} or any(
                name in self._picked for name in c.borrowed):
            raise ValueError(f"borrowed emulators need their ports: {c.borrowed}")
        self._own_workdir = c.workdir is None
        self.workdir = Path(c.workdir or tempfile.mkdtemp(prefix="kiln-stack-"))
        self.logs = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self.storage_proxy: HttpFaultProxy | None = None
        self.pubsub_proxy: TcpProxy | None = None
        self.firestore_proxy: TcpProxy | None = None
        unknown = set(c.fault_proxies) - {"storage", "pubsub", "firestore"}
        if unknown:
            raise ValueError(f"unknown fault proxies: {sorted(unknown)}")
        self.fcm = FcmServer(c.host, c.fcm_port)
        self._sweeper_stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.relay: PushRelay | None = None
        self.sweeps: list[dict[str, int]] = []
        self.started = False

    # --- addresses --------------------------------------------------------------------

    def _addr(self, port: int) -> str:
        return f"{self.config.host}:{port}"

    @property
    def ingress_url(self) -> str:
        return f"http://{self._addr(self.config.ingress_port)}"

    @property
    def pubsub_host(self) -> str:
        """The Pub/Sub emulator's ``address:port``."""
        return self._addr(self.config.pubsub_port)

    def pubsub_publisher(self) -> PublisherClient:
        """A publisher on this stack's Pub/Sub emulator (:func:`emulator_publisher`)."""
        return emulator_publisher(self.pubsub_host)

    def pubsub_subscriber(self) -> SubscriberClient:
        """A subscriber on this stack's Pub/Sub emulator (:func:`emulator_subscriber`)."""
        return emulator_subscriber(self.pubsub_host)

    @property
    def worker_url(self) -> str:
        return f"http://{self._addr(self.config.worker_port)}"

    @property
    def bucket(self) -> str:
        return f"{self.config.project}.appspot.com"

    def client_env(self) -> dict[str, str]:
        """Environment that points Kiln's own code (and Google clients) at this stack."""
        c = self.config
        return {
            "KILN_ENV": "local",
            "GOOGLE_CLOUD_PROJECT": c.project,
            "FIRESTORE_EMULATOR_HOST": self._addr(c.firestore_port),
            "PUBSUB_EMULATOR_HOST": self._addr(c.pubsub_port),
            "STORAGE_EMULATOR_HOST": f"http://{self._addr(c.storage_port)}",
            # Marks Firebase Auth as emulated: ID tokens are unsigned (local only).
            "FIREBASE_AUTH_EMULATOR_HOST": self._addr(c.firestore_port),
            "KILN_FCM_ENDPOINT": self.fcm.url,
            "KILN_BUCKET": self.bucket,
            "CLOUD_TASKS_EMULATOR_HOST": self._addr(c.tasks_port),
            # Where providers reach the ingress (callbacks: POST {url}/v1/providers/…/events).
            "KILN_PUBLIC_URL": self.ingress_url,
            # The stack's callers are tests, demos and chaos runs of hundreds of jobs from a
            # few uids: generous plans unless the config sets its own (the fair queue's own
            # tests and bench-fairness do).
            "KILN_PLANS": LOCAL_PLANS, "KILN_PROVIDER_CAPACITY": "64",
            **{k: v for companion in c.companions for k, v in companion.env().items()},
            **c.env,
        }

    def function_env(self) -> dict[str, str]:
        """The functions' environment: ``client_env()`` with fault proxies in the way."""
        env = self.client_env()
        if self.storage_proxy is not None:
            env["STORAGE_EMULATOR_HOST"] = self.storage_proxy.url
        if self.pubsub_proxy is not None:
            env["PUBSUB_EMULATOR_HOST"] = self.pubsub_proxy.address
        if self.firestore_proxy is not None:
            env["FIRESTORE_EMULATOR_HOST"] = self.firestore_proxy.address
        return {**env, **self.config.env}

    def services(self, **overrides: Any) -> Services:
        """A ``Services`` bound to this stack: its settings come from ``client_env()``
        explicitly (nothing is read from or written to ``os.environ``), so stacks can live
        side by side in one process. Uses the development generators, as the functions do."""
        from kiln.compose import Services
        from kiln_dev.providers import DEV_PROVIDERS

        return Services(self.settings(**overrides), providers=DEV_PROVIDERS)

    def settings(self, **overrides: Any) -> Settings:
        """This stack's ``Settings`` (from ``client_env()``, not the process environment)."""
        from kiln.settings import Settings

        return Settings.from_env(self.client_env(), **overrides)

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        _install_cleanup()
        _LIVE.add(self)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _start(self) -> None:
        c = self.config
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise StackError("gcloud is not installed: the Firestore and Pub/Sub emulators "
                             "come with the Google Cloud CLI (see README, Requirements).")
        own = [name for name in EMULATORS if name not in c.borrowed]
        for name in own:
            self._spawn_emulator(name, gcloud)
        self.fcm.start()
        for companion in c.companions:
            companion.start()
        deadline = time.monotonic() + c.startup_timeout
        for name in own:
            self._wait_emulator(name, gcloud, deadline)
        self._start_proxies()  # after the waits: a part may have moved to another port
        self._start_functions(deadline)
        self._create_topology()
        if c.push_relay > 0:
            self.relay = PushRelay(
                self.pubsub_host,
                f"projects/{c.project}/subscriptions/{WORKER_SUBSCRIPTION}", f"{self.worker_url}/",
                concurrency=c.push_relay).start()
        if c.sweep_interval > 0:
            self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True, name="sweeper")
            self._sweeper.start()

    def _spawn_emulator(self, name: str, gcloud: str) -> None:
        c = self.config
        if name == "firestore":
            rules = REPO / "infra" / "firestore.rules"
            self._spawn(name, [gcloud, "emulators", "firestore", "start",
                               f"--host-port={self._addr(c.firestore_port)}",
                               f"--rules={rules}", "--quiet"],
                        ready=f"http://{self._addr(c.firestore_port)}/")
        elif name == "pubsub":
            self._spawn(name, [gcloud, "beta", "emulators", "pubsub", "start",
                               f"--host-port={self._addr(c.pubsub_port)}",
                               f"--project={c.project}", "--quiet"],
                        ready=f"http://{self._addr(c.pubsub_port)}/")
        elif name == "storage":
            storage_dir = self.workdir / "storage"
            storage_dir.mkdir(exist_ok=True)
            self._spawn(name, [sys.executable, "-m", "kiln_dev.storage_emulator", "start",
                               f"--host={c.host}", f"--port={c.storage_port}",
                               f"--default-bucket={self.bucket}", "--quiet"],
                        cwd=storage_dir, ready=f"http://{self._addr(c.storage_port)}/")
        else:
            self._spawn_tasks()

    def _wait_emulator(self, name: str, gcloud: str, deadline: float) -> None:
        """Wait until ``name`` is ready. A part that exits first because its picked port
        was taken in the meantime (by another stack starting beside this one) is started
        again on a new port, up to twice."""
        ports = [name, "tasks_http"] if name == "tasks" else [name]
        for attempt in range(3):
            try:
                self._wait_ready(name, deadline)
                return
            except PartExited:
                if attempt == 2 or not self._picked.issuperset(ports):
                    raise
            self.kill(name)
            for port in ports:
                setattr(self.config, f"{port}_port", free_port(self.config.host))
            self._spawn_emulator(name, gcloud)

    def _start_functions(self, deadline: float) -> None:
        """The ingress and the worker; each knows the other's address, so a port taken
        before either bound moves both."""
        from kiln.settings import INGRESS_GRPC_EXPERIMENTS

        c = self.config
        for attempt in range(3):
            env = {**os.environ, **self.function_env(),
                   "THREADS": str(max(c.worker_threads, c.push_relay)),
                   "WORKERS": str(c.worker_processes), "PYTHONUNBUFFERED": "1"}
            # OTEL_SERVICE_NAME names each function's spans, as the Terraform does.
            # As the Terraform sets it; one from the caller's environment or config wins.
            self._spawn("ingress", self._ff("ingress", "http", c.ingress_port),
                        env={"GRPC_EXPERIMENTS": INGRESS_GRPC_EXPERIMENTS, **env,
                             "THREADS": str(c.ingress_threads),
                             "OTEL_SERVICE_NAME": "kiln-ingress"},
                        ready=f"{self.ingress_url}/healthz", want=200)
            self._spawn("worker", self._ff("worker", "cloudevent", c.worker_port),
                        env={**env, "OTEL_SERVICE_NAME": "kiln-worker"},
                        ready=f"{self.worker_url}/")
            try:
                self._wait_ready("ingress", deadline)
                self._wait_ready("worker", deadline)
                return
            except PartExited:
                if attempt == 2 or not self._picked.issuperset(("ingress", "worker")):
                    raise
            for name in ("ingress", "worker"):
                self.kill(name)
                setattr(c, f"{name}_port", free_port(c.host))

    def _spawn_tasks(self) -> None:
        c = self.config
        if not TASKS_PYTHON.exists():
            raise StackError(f"the Cloud Tasks emulator is not installed ({TASKS_PYTHON} is "
                             "missing): run `make tasks-emulator` (see README, Requirements).")
        settings = self.settings()
        queue = (f"projects/{c.project}/locations/{settings.tasks_location}"
                 f"/queues/{settings.tasks_queue}")
        cmd = [str(TASKS_PYTHON), str(Path(__file__).with_name("tasks_emulator.py")),
               f"--host={c.host}", f"--port={c.tasks_port}", f"--http-port={c.tasks_http_port}",
               f"--queue={queue}", f"--drop-rate={c.tasks_drop_rate}"]
        if c.tasks_seed is not None:
            cmd.append(f"--seed={c.tasks_seed}")
        # Its own interpreter and nothing of ours on the path (protobuf<5 lives there).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self._spawn("tasks", cmd, env={**env, "PYTHONUNBUFFERED": "1"},
                    ready=f"http://{self._addr(c.tasks_http_port)}/")

    def tasks_stats(self) -> dict[str, int]:
        """The Cloud Tasks emulator's counters: created, refused_duplicates, dispatched,
        dropped, failed (since it last started)."""
        url = f"http://{self._addr(self.config.tasks_http_port)}/stats"
        stats: dict[str, int] = httpx.get(url, timeout=5).json()
        return stats

    def _ff(self, name: str, signature: str, port: int) -> list[str]:
        return [sys.executable, "-m", "functions_framework", "--target", name,
                "--source", str(Path(__file__).with_name("functions.py")),
                "--signature-type", signature, "--host", self.config.host, "--port", str(port)]

    def _start_proxies(self) -> None:
        c = self.config
        wanted = set(c.fault_proxies)
        if "storage" in wanted:
            self.storage_proxy = HttpFaultProxy(c.host, c.storage_port, seed=c.proxy_seed,
                                                name="storage").start()
        if "pubsub" in wanted:
            self.pubsub_proxy = TcpProxy(c.host, c.pubsub_port, name="pubsub").start()
        if "firestore" in wanted:
            self.firestore_proxy = TcpProxy(c.host, c.firestore_port, name="firestore").start()

    def _spawn(self, name: str, cmd: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None, ready: str | None = None,
               want: int | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)  # a restart must survive a /tmp cleanup
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self._specs[name] = {"cmd": cmd, "env": env, "cwd": cwd, "ready": ready, "want": want,
                             "log_from": log.tell()}
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env or {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
            cwd=cwd or self.workdir, start_new_session=True,
        )
        log.close()

    def _wait_ready(self, name: str, deadline: float) -> None:
        spec = self._specs[name]
        if spec["ready"]:
            self._wait_http(name, spec["ready"], deadline, want=spec["want"])

    def _port_taken(self, name: str) -> bool:
        """Whether ``name`` said, since it was last started, that it could not bind."""
        with contextlib.suppress(OSError), open(self.logs / f"{name}.log", "rb") as log:
            log.seek(self._specs.get(name, {}).get("log_from", 0))
            said = log.read().lower()
            return b"address already in use" in said or b"connection in use" in said  # gunicorn
        return False

    def _wait_http(self, name: str, url: str, deadline: float, want: int | None = None) -> None:
        delay = 0.05
        while True:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise PartExited(f"{name} exited with {proc.returncode}; see {self.logs / name}.log")
            if self._port_taken(name):  # some parts live on when their server cannot bind
                raise PartExited(f"{name} found its port taken; see {self.logs / name}.log")
            try:
                response = httpx.get(url, timeout=2.0)
                if want is None or response.status_code == want:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not become ready at {url}; see {self.logs / name}.log")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _create_topology(self) -> None:
        """The jobs topic with the worker's push subscription, and the dead-letter topic
        with its pull subscription (idempotent: also run after a Pub/Sub restart)."""
        from google.api_core import exceptions as gexc

        project = self.config.project
        publisher, subscriber = self.pubsub_publisher(), self.pubsub_subscriber()
        try:
            topic = publisher.topic_path(project, self.settings().jobs_topic)
            dead = publisher.topic_path(project, DEAD_TOPIC)
            requests: list[tuple[Any, dict[str, Any]]] = [
                (publisher.create_topic, {"name": topic}),
                (publisher.create_topic, {"name": dead}),
                (subscriber.create_subscription, {"request": {
                    "name": subscriber.subscription_path(project, WORKER_SUBSCRIPTION),
                    "topic": topic,
                    # Pulled by the push relay when there is one (kiln_dev.pusher).
                    "push_config": {} if self.config.push_relay > 0
                    else {"push_endpoint": f"{self.worker_url}/"},
                    "ack_deadline_seconds": 600,
                    "retry_policy": {"minimum_backoff": "1s", "maximum_backoff": "10s"},
                    # Accepted, not honoured, by the emulator (see docs/reliability.md).
                    "dead_letter_policy": {"dead_letter_topic": dead,
                                           "max_delivery_attempts": 10},
                }}),
                (subscriber.create_subscription, {"request": {
                    "name": subscriber.subscription_path(project, DEAD_SUBSCRIPTION),
                    "topic": dead,
                    "ack_deadline_seconds": 60,
                }}),
            ]
            for create, kwargs in requests:
                with contextlib.suppress(gexc.AlreadyExists):
                    create(**kwargs)
        finally:
            publisher.transport.close()
            subscriber.transport.close()

    def _sweep_loop(self) -> None:
        from kiln.runtime.sweeper import sweep

        services = self.services()
        while not self._sweeper_stop.wait(self.config.sweep_interval):
            try:
                self.sweeps.append(sweep(services))
            except Exception as exc:  # the loop must outlive an emulator restart
                self.sweeps.append({"error": 1})
                print(f"sweeper: {type(exc).__name__}: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._sweeper_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        _kill_groups(list(reversed(self.procs.values())))
        self.procs.clear()
        proxies = [p for p in (self.storage_proxy, self.pubsub_proxy, self.firestore_proxy) if p]
        for companion in [self.fcm, *self.config.companions, *proxies]:
            with contextlib.suppress(Exception):
                companion.stop()
        _LIVE.discard(self)
        if self._own_workdir and not os.environ.get("KILN_KEEP_STACK_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.started = False

    # --- breaking it on purpose -------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL one part (its whole process group), as a crash or a lost instance.

        A killed Firestore emulator loses every document; Pub/Sub loses its topics,
        subscriptions and undelivered messages; the Storage emulator keeps its files; the
        Cloud Tasks emulator loses its pending tasks (lost checks) and the names it knew.
        """
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, name: str, *, down_for: float = 0.0) -> None:
        """Kill ``name`` (SIGKILL) and start it again on the same port; wait until ready.

        A restarted Pub/Sub emulator gets the topics and subscriptions again.
        """
        self.kill(name)
        if down_for > 0:
            time.sleep(down_for)
        self.start_part(name)

    def start_part(self, name: str) -> None:
        """Start a killed part again with the command and environment it had."""
        spec = self._specs[name]
        self._wait_port_free(name)
        self._spawn(name, spec["cmd"], env=spec["env"], cwd=spec["cwd"], ready=spec["ready"],
                    want=spec["want"])
        self._wait_ready(name, time.monotonic() + self.config.startup_timeout)
        if name == "pubsub":
            self._create_topology()

    def _wait_port_free(self, name: str, timeout: float = 10.0) -> None:
        port = getattr(self.config, f"{name}_port")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.config.host, port))
                    return
                except OSError:
                    time.sleep(0.1)

    def worker_processes(self, function: str = "worker") -> list[int]:
        """Pids of a function's gunicorn workers (children of its arbiter), the worker's
        unless ``function`` names another."""
        return procfs.live_children(self.procs[function].pid)

    def kill_worker_process(self, pid: int | None = None) -> int | None:
        """SIGKILL one gunicorn worker of the worker function (its in-flight jobs die
        mid-run); the arbiter starts a replacement. Returns the pid killed, if any."""
        if pid is None:
            pids = self.worker_processes()
            if not pids:
                return None
            pid = random.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def worker_log_lines(self) -> list[str]:
        """The worker function's log so far (its JSON lines and anything else)."""
        path = self.logs / "worker.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    # --- test helpers ---------------------------------------------------------------

    def reset_firestore(self) -> None:
        url = (f"http://{self._addr(self.config.firestore_port)}/emulator/v1/projects/"
               f"{self.config.project}/databases/(default)/documents")
        httpx.delete(url, timeout=10).raise_for_status()


def _kill_groups(procs: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    """Stop the process groups of ``procs`` together: SIGTERM to all, a shared ``grace``
    period, then SIGKILL for the rest. Bounded (about ``grace`` + 5 s) however many parts
    there are or however slowly one of them shuts down. The grace is short on purpose:
    gunicorn waits for in-flight requests (a hung generation holds one for minutes), and
    nothing is lost by cutting them, since every job is durable and claimed by lease."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(proc.poll() is None for proc in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    # SIGKILL every group, exited leader or not: it may hold children (gcloud → java)
    # that outlive their parent.
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


_cleanup_installed = False


def _install_cleanup() -> None:
    """Stop every live stack at exit and on SIGTERM/SIGHUP (Ctrl-C raises KeyboardInterrupt)."""
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                _stop_all()
                if callable(previous):
                    previous(signum, frame)
                raise SystemExit(128 + signum)

            signal.signal(sig, handler)


def _stop_all() -> None:
    for stack in list(_LIVE):
        stack.stop()
