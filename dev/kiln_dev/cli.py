"""``kiln``: the local stack, the demo, and operator commands.

    kiln demo             start the stack, run an image and a GLB job end to end, stop
    kiln dev              run the stack until Ctrl-C (writes .kiln/dev.json for the others;
                          --trace [PATH]: its OpenTelemetry spans as JSON lines)
    kiln watch JOB_ID     live progress of one job (snapshot listener)
    kiln jobs ...         list / show / cancel / retry jobs (see ``kiln jobs --help``)
    kiln trace JOB_ID     a job's timeline as a waterfall (accepted → notified)

Commands other than ``demo``/``dev`` talk to the stack described by ``.kiln/dev.json``
when it exists (and the environment names no emulator), else to whatever the environment
points at (a real project). Nothing here rewrites ``os.environ``: the stack's settings are
built from ``dev.json`` explicitly and handed to the commands as ``args.services``.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import importlib
import io
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:
    from kiln.compose import Services
    from kiln.settings import Settings
    from kiln_dev.stack import LocalStack

DEV_FILE = Path(".kiln/dev.json")
SPANS_FILE = Path(".kiln/spans.jsonl")
#: Modules that add their own sub-commands with ``add_parser(subparsers)``.
OPTIONAL_COMMANDS = ("kiln.channels.telegram.cli", "kiln.ops.deadletter", "kiln.ops.keys",
                     "kiln.ops.webhooks", "kiln.ops.trace")


def main(argv: Sequence[str] | None = None, *,
         services: Callable[[], Services] | None = None) -> int:
    """Run one command. ``services``: where commands get their ``Services`` (a zero-arg
    callable, set as ``args.services``); by default :func:`dev_services`."""
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__.split("\n\n")[0])
    parser.set_defaults(services=services or dev_services)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an image and a GLB job through the local stack")
    demo.add_argument("--out", default="out", help="where to save results (default ./out)")
    demo.add_argument("--image-prompt", default="a red sphere on a calm sea")
    demo.add_argument("--model-prompt", default="a golden torus")
    demo.add_argument("--telegram", action="store_true",
                      help="show a whole Telegram chat exchange instead (bot API stand-in)")
    demo.add_argument("--backend", action="store_true",
                      help="show a backend instead: an API key, a batch of 14 images, one "
                      "signed batch.completed webhook")
    dev = sub.add_parser("dev", help="run the local stack until Ctrl-C")
    dev.add_argument("--port", type=int, default=8080, help="ingress port (default 8080)")
    dev.add_argument("--worker-concurrency", type=int, default=8, metavar="N",
                     help="jobs the worker runs at once, as a cloud instance (default 8; "
                          "0: the Pub/Sub emulator's own push, at most 2)")
    dev.add_argument("--trace", nargs="?", const=str(SPANS_FILE), metavar="PATH",
                     help=f"record OpenTelemetry spans, one JSON line each, in PATH (default "
                          f"{SPANS_FILE}; '-': print them in the functions' logs); "
                          "docs/tracing.md")
    from kiln.ops import args as argtypes
    from kiln.ops.jobs import add_jobs_parser

    watch = sub.add_parser("watch", help="show a job's live progress")
    watch.add_argument("job_id", type=argtypes.job_id)

    add_jobs_parser(sub)
    for module in OPTIONAL_COMMANDS:
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise
    args = parser.parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack: how to see where a stuck command is
    # (not when stderr is no real file, as under a test's capture).
    with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    handler: Callable[[argparse.Namespace], int] = args.handler if hasattr(args, "handler") else {
        "demo": run_demo, "dev": run_dev, "watch": run_watch}[args.command]
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import DefaultCredentialsError

    from kiln.core.errors import KilnError, RetryableError

    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except NoStack as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 2
    except RetryableError as exc:  # a store, queue or host that does not answer now
        print(f"kiln: {exc.message} Nothing was changed by this command unless it says so; "
              "try again when it answers.", file=sys.stderr)
        return 2
    except KilnError as exc:
        print(f"kiln: {exc.message}", file=sys.stderr)
        return 2
    except GoogleAPICallError as exc:  # a refusal Kiln did not translate
        print(f"kiln: Google Cloud refused the call: {exc.message}", file=sys.stderr)
        return 2
    except DefaultCredentialsError:
        print("kiln: no local stack and no Google credentials. This command talks to the "
              "stack `make dev` runs: start it in another terminal and run the command from "
              "inside the repository (it finds .kiln/dev.json there); for a cloud project, "
              "set GOOGLE_APPLICATION_CREDENTIALS and GOOGLE_CLOUD_PROJECT.", file=sys.stderr)
        return 2


# --- the stack --------------------------------------------------------------------------


def run_dev(args: argparse.Namespace) -> int:
    from kiln.adapters.firebase_auth import emulator_id_token
    from kiln_dev.stack import LocalStack, StackConfig, wait_until_interrupted

    # Ctrl-C must stop the stack even when the shell that started us ignored SIGINT (a
    # background job of a non-interactive shell inherits SIG_IGN, and Python then keeps it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = trace_env(args.trace)
    stack = LocalStack(StackConfig(ingress_port=args.port, push_relay=args.worker_concurrency,
                                   env=env))
    print("starting the local stack…", flush=True)
    with stack:
        try:
            write_dev_file(stack)
            token = emulator_id_token("dev-user", stack.config.project)
            print(f"ingress  {stack.ingress_url}   (POST /v1/jobs, GET /v1/jobs/ID, /healthz)")
            relay = f", {args.worker_concurrency} at once" if args.worker_concurrency else ""
            print(f"worker   {stack.worker_url}   (Pub/Sub push target{relay})")
            print(f"fcm      {stack.fcm.url}/_kiln/messages   (recorded pushes)")
            print(f"logs     {stack.logs}")
            if env:
                print(f"spans    {args.trace if args.trace != '-' else 'in the logs'}   "
                      "(KILN_TRACING; docs/tracing.md)")
            print("\ntry:\n  curl -s -X POST " + stack.ingress_url + "/v1/jobs \\\n"
                  f"    -H 'Authorization: Bearer {token}' \\\n"
                  "    -H 'Content-Type: application/json' \\\n"
                  "    -d '{\"kind\": \"image\", \"prompt\": \"a blue cube\"}'\n"
                  "  .venv/bin/kiln watch JOB_ID   (from the repository, in another "
                  "terminal)\n\nCtrl-C stops everything.", flush=True)
            wait_until_interrupted()
        finally:
            DEV_FILE.unlink(missing_ok=True)
    return 0


def trace_env(trace: str | None) -> dict[str, str]:
    """The functions' tracing settings for ``kiln dev --trace [PATH]`` (none without it)."""
    if trace is None:
        return {}
    if trace == "-":
        return {"KILN_TRACING": "console"}
    path = Path(trace).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"KILN_TRACING": f"file:{path}"}


def write_dev_file(stack: LocalStack) -> None:
    """``.kiln/dev.json``: how other commands reach this stack (written whole, atomically)."""
    DEV_FILE.parent.mkdir(exist_ok=True)
    partial = DEV_FILE.with_suffix(".json.partial")
    partial.write_text(json.dumps({"env": stack.client_env(), "ingress": stack.ingress_url,
                                   "worker": stack.worker_url, "logs": str(stack.logs),
                                   "pid": os.getpid()}))
    partial.replace(DEV_FILE)


class NoStack(Exception):
    """A command needs the local stack and finds none (or a stale ``.kiln/dev.json``)."""


def dev_file() -> Path | None:
    """``.kiln/dev.json`` of this folder or of the nearest parent that has one (so a
    command run from inside the repository finds the stack ``kiln dev`` runs there)."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / DEV_FILE).exists():
            return folder / DEV_FILE
    return None


def dev_env() -> dict[str, str] | None:
    """The environment of the stack ``kiln dev`` runs (``.kiln/dev.json``), or None when
    none runs here or the process environment names an emulator of its own (it wins).

    Raises:
        NoStack: the file names a ``kiln dev`` that is no longer running (killed: it
            could not remove its file), whose emulators would never answer.
    """
    path = dev_file()
    if path is None or os.environ.get("FIRESTORE_EMULATOR_HOST"):
        return None
    try:
        recorded = json.loads(path.read_text())
        pid, env = recorded.get("pid"), recorded["env"]
        env = {str(k): str(v) for k, v in env.items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise NoStack(f"{path} is not a file `kiln dev` wrote (unreadable or damaged). "
                      "Start `make dev` again (it rewrites the file).") from None
    if isinstance(pid, int) and not _alive(pid):
        raise NoStack(f"{path} is stale: the kiln dev that wrote it (pid {pid}) is not "
                      "running. Start `make dev` again (it rewrites the file).")
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dev_settings() -> Settings | None:
    """The ``Settings`` of the stack ``kiln dev`` runs, if any (read, never put in os.environ)."""
    from kiln.settings import Settings

    env = dev_env()
    return None if env is None else Settings.from_env(env)


def dev_services() -> Services:
    """The services of the stack ``kiln dev`` runs, else the environment's (read now: a
    command line is one invocation). Built once per process and stack."""
    env = dev_env()
    return _services_for(tuple(sorted((env if env is not None else os.environ).items())))


@functools.cache
def _services_for(env: tuple[tuple[str, str], ...]) -> Services:
    from kiln import log
    from kiln.compose import Services
    from kiln.settings import Settings

    settings = Settings.from_env(dict(env))
    _check_emulator(dict(env).get("FIRESTORE_EMULATOR_HOST"))
    log.setup(settings.log_level)
    return Services(settings)


def _check_emulator(host: str | None) -> None:
    """A Firestore emulator that does not take connections is said at once: the client
    would retry for about five minutes before giving up."""
    if not host:
        return
    name, _, port = host.rpartition(":")
    try:
        socket.create_connection((name.strip("[]") or "127.0.0.1", int(port)), timeout=2).close()
    except (OSError, ValueError):
        raise NoStack(f"the Firestore emulator at {host} does not answer. Is `make dev` "
                      "running (or the emulator FIRESTORE_EMULATOR_HOST names)?") from None


# --- watching -------------------------------------------------------------------------


def bar(progress: int, width: int = 24) -> str:
    filled = int(width * max(0, min(100, progress)) / 100)
    return "█" * filled + "░" * (width - filled)


class ProgressBoard:
    """Live progress lines for jobs, fed by Firestore snapshot listeners."""

    def __init__(self, client: Any, labels: dict[str, str], stream: Any = sys.stdout) -> None:
        self.client = client
        self.labels = labels
        self.stream = stream
        self.tty = stream.isatty()
        self.state: dict[str, Job] = {}
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._drawn = 0
        self._watches: list[Any] = []

    def start(self) -> ProgressBoard:
        for job_id in self.labels:
            ref = self.client.collection("jobs").document(job_id)
            self._watches.append(ref.on_snapshot(self._on_snapshot))
        return self

    def _on_snapshot(self, docs: list[Any], _changes: Any, _read_time: Any) -> None:
        for doc in docs:
            if doc.exists:
                with self._lock:
                    # The public document only: the server state is not the listener's.
                    self.state[doc.id] = Job.from_docs(doc.id, doc.to_dict() or {})
                    self._draw(doc.id)
                    if len(self.state) == len(self.labels) and all(
                            job.terminal for job in self.state.values()):
                        self.done.set()

    def _line(self, job_id: str) -> str:
        job = self.state.get(job_id)
        progress = job.progress if job else 0
        status = job.status.value if job else "…"
        return (f"  {self.labels[job_id]:<6} {bar(progress)} {progress:3d}%  "
                f"{status:<10} {job.stage if job else ''}")

    def _draw(self, changed: str) -> None:
        if self.tty:
            # Redraw every job's line in place.
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F")
            self.stream.write("".join(self._line(j) + "\x1b[K\n" for j in self.labels))
            self._drawn = len(self.labels)
        else:
            # A log, not a screen: one line for the job that changed.
            self.stream.write(self._line(changed) + "\n")
        self.stream.flush()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def stop(self) -> None:
        for watch in self._watches:
            watch.unsubscribe()


def run_watch(args: argparse.Namespace) -> int:
    services = args.services()
    if services.store.get(args.job_id) is None:  # else it would wait a day for nothing
        print(f"no job {args.job_id}", file=sys.stderr)
        return 1
    board = ProgressBoard(services.firestore, {args.job_id: "job"}).start()
    try:
        board.wait(timeout=24 * 3600)
    finally:
        board.stop()
    job = board.state.get(args.job_id)
    if job is None:
        return 1
    error: Mapping[str, Any] = job.error or {}
    result: Mapping[str, Any] = job.result or {}
    if error:
        print(f"  error: {error.get('code')}: {error.get('message')}")
    if result:
        print(f"  result: {result.get('path')} ({result.get('bytes')} bytes)")
    return 0 if job.status is JobStatus.COMPLETED else 1


def run_demo(args: argparse.Namespace) -> int:
    if args.telegram:
        from kiln_dev.telegram_demo import telegram_demo

        return telegram_demo(Path(args.out))
    if args.backend:
        from kiln_dev.demo_backend import backend_demo

        return backend_demo()
    from kiln_dev.demo import demo

    return demo(Path(args.out), image_prompt=args.image_prompt, model_prompt=args.model_prompt)


if __name__ == "__main__":
    raise SystemExit(main())
