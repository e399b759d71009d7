"""The local stack: every part of Kiln on one machine, no cloud account.

Starts the Firestore emulator (with ``infra/firestore.rules``), the Pub/Sub emulator,
the Cloud Storage emulator, an FCM-compatible server, and the ingress and worker
functions under functions-framework; creates the jobs topic and a push subscription
from the emulator to the local worker; runs the sweeper in a loop. Readiness is probed,
never slept for. Ports are picked free unless given, so stacks run side by side.

Every child runs in its own process group and is killed with it on ``stop()``, on
Ctrl-C, on SIGTERM and at interpreter exit, so nothing is left running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from kiln.local.fcm_server import FcmServer

REPO = Path(__file__).resolve().parents[3]
PROJECT = "demo-kiln"  # demo- ids can never reach a real project
_LIVE: weakref.WeakSet[LocalStack] = weakref.WeakSet()


class Companion(Protocol):
    """A stand-in server the stack runs beside the functions (Telegram, a provider, …).

    ``env()`` is merged into the functions' environment, so the code under test finds it.
    """

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def env(self) -> dict[str, str]: ...


class StackError(RuntimeError):
    """A part of the local stack did not start; the message says which and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    sweep_interval: float = 2.0  # 0 turns the local sweeper loop off
    worker_threads: int = 8
    workdir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra KILN_* settings for functions
    companions: list[Companion] = field(default_factory=list)
    startup_timeout: float = 90.0


class LocalStack:
    """Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        c = self.config
        for name in ("firestore", "pubsub", "storage", "ingress", "worker"):
            if getattr(c, f"{name}_port") == 0:
                setattr(c, f"{name}_port", free_port(c.host))
        self._own_workdir = c.workdir is None
        self.workdir = Path(c.workdir or tempfile.mkdtemp(prefix="kiln-stack-"))
        self.logs = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.fcm = FcmServer(c.host, c.fcm_port)
        self._sweeper_stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.sweeps: list[dict[str, int]] = []
        self.started = False

    # --- addresses --------------------------------------------------------------------

    def _addr(self, port: int) -> str:
        return f"{self.config.host}:{port}"

    @property
    def ingress_url(self) -> str:
        return f"http://{self._addr(self.config.ingress_port)}"

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
            **{k: v for companion in c.companions for k, v in companion.env().items()},
            **c.env,
        }

    def services(self, **overrides: Any) -> Any:
        """A ``Services`` bound to this stack, its clients built now (they read the env once)."""
        from kiln.services import Services

        with _env(**self.client_env()):
            services = Services(self.settings(**overrides))
            _ = (services.store, services.queue, services.blobs, services.push, services.auth)
        return services

    def settings(self, **overrides: Any) -> Any:
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
        rules = REPO / "infra" / "firestore.rules"
        self._spawn("firestore", [gcloud, "emulators", "firestore", "start",
                                  f"--host-port={self._addr(c.firestore_port)}",
                                  f"--rules={rules}", "--quiet"])
        self._spawn("pubsub", [gcloud, "beta", "emulators", "pubsub", "start",
                               f"--host-port={self._addr(c.pubsub_port)}",
                               f"--project={c.project}", "--quiet"])
        storage_dir = self.workdir / "storage"
        storage_dir.mkdir(exist_ok=True)
        self._spawn("storage", [sys.executable, "-m", "gcp_storage_emulator", "start",
                                f"--host={c.host}", f"--port={c.storage_port}",
                                f"--default-bucket={self.bucket}", "--quiet"],
                    cwd=storage_dir)
        self.fcm.start()
        for companion in c.companions:
            companion.start()
        deadline = time.monotonic() + c.startup_timeout
        self._wait_http("firestore", f"http://{self._addr(c.firestore_port)}/", deadline)
        self._wait_http("pubsub", f"http://{self._addr(c.pubsub_port)}/", deadline)
        self._wait_http("storage", f"http://{self._addr(c.storage_port)}/", deadline)
        env = {**os.environ, **self.client_env(), "THREADS": str(c.worker_threads),
               "PYTHONUNBUFFERED": "1"}
        self._spawn("ingress", self._ff("ingress", "http", c.ingress_port), env=env)
        self._spawn("worker", self._ff("worker", "cloudevent", c.worker_port), env=env)
        self._wait_http("ingress", f"{self.ingress_url}/healthz", deadline, want=200)
        self._wait_http("worker", f"{self.worker_url}/", deadline)
        self._create_topology()
        if c.sweep_interval > 0:
            self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True, name="sweeper")
            self._sweeper.start()

    def _ff(self, name: str, signature: str, port: int) -> list[str]:
        return [sys.executable, "-m", "functions_framework", "--target", name,
                "--source", str(REPO / "functions" / name / "main.py"),
                "--signature-type", signature, "--host", self.config.host, "--port", str(port)]

    def _spawn(self, name: str, cmd: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env or {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
            cwd=cwd or self.workdir, start_new_session=True,
        )
        log.close()

    def _wait_http(self, name: str, url: str, deadline: float, want: int | None = None) -> None:
        delay = 0.05
        while True:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}; see {self.logs / name}.log")
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
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        env = self.client_env()
        with _env(PUBSUB_EMULATOR_HOST=env["PUBSUB_EMULATOR_HOST"]):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
            topic = publisher.topic_path(self.config.project, self.settings().jobs_topic)
            publisher.create_topic(name=topic)
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(self.config.project, "kiln-jobs-worker"),
                "topic": topic,
                "push_config": {"push_endpoint": f"{self.worker_url}/"},
                "ack_deadline_seconds": 600,
                "retry_policy": {"minimum_backoff": "1s", "maximum_backoff": "10s"},
            })
            subscriber.close()

    def _sweep_loop(self) -> None:
        from kiln.sweeper import sweep

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
            self._sweeper.join(timeout=10)
        for name in reversed(list(self.procs)):
            _kill_group(self.procs[name])
        self.procs.clear()
        for companion in [self.fcm, *self.config.companions]:
            with contextlib.suppress(Exception):
                companion.stop()
        _LIVE.discard(self)
        if self._own_workdir and not os.environ.get("KILN_KEEP_STACK_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.started = False

    # --- test helpers ---------------------------------------------------------------

    def reset_firestore(self) -> None:
        url = (f"http://{self._addr(self.config.firestore_port)}/emulator/v1/projects/"
               f"{self.config.project}/databases/(default)/documents")
        httpx.delete(url, timeout=10).raise_for_status()


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    # The group may hold children (gcloud → java) that outlive their parent.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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


@contextlib.contextmanager
def _env(**values: str) -> Any:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
