"""``kiln``: the local stack, the demo, and operator commands.

    kiln demo             start the stack, run an image and a GLB job end to end, stop
    kiln dev              run the stack until Ctrl-C (writes .kiln/dev.json for the others)
    kiln watch JOB_ID     live progress of one job (snapshot listener)
    kiln jobs ...         list / show / cancel / retry jobs (see ``kiln jobs --help``)

Commands other than ``demo``/``dev`` talk to the stack described by ``.kiln/dev.json``
when it exists, else to whatever the environment points at (a real project).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEV_FILE = Path(".kiln/dev.json")
#: Modules that add their own sub-commands with ``add_parser(subparsers)``.
OPTIONAL_COMMANDS = ("kiln.channels.telegram.cli", "kiln.ops.deadletter")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an image and a GLB job through the local stack")
    demo.add_argument("--out", default="out", help="where to save results (default ./out)")
    demo.add_argument("--image-prompt", default="a red sphere on a calm sea")
    demo.add_argument("--model-prompt", default="a golden torus")
    demo.add_argument("--telegram", action="store_true",
                      help="show a whole Telegram chat exchange instead (bot API stand-in)")
    dev = sub.add_parser("dev", help="run the local stack until Ctrl-C")
    dev.add_argument("--port", type=int, default=8080, help="ingress port (default 8080)")
    watch = sub.add_parser("watch", help="show a job's live progress")
    watch.add_argument("job_id")
    from kiln.ops.jobs import add_jobs_parser

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
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


# --- the stack --------------------------------------------------------------------------


def run_dev(args: argparse.Namespace) -> int:
    from kiln.adapters.firebase_auth import emulator_id_token
    from kiln_dev.stack import LocalStack, StackConfig, wait_until_interrupted

    stack = LocalStack(StackConfig(ingress_port=args.port))
    print("starting the local stack…", flush=True)
    with stack:
        DEV_FILE.parent.mkdir(exist_ok=True)
        DEV_FILE.write_text(json.dumps({"env": stack.client_env(), "ingress": stack.ingress_url}))
        token = emulator_id_token("dev-user", stack.config.project)
        print(f"ingress  {stack.ingress_url}   (POST /v1/jobs, GET /v1/jobs/ID, /healthz)")
        print(f"worker   {stack.worker_url}   (Pub/Sub push target)")
        print(f"fcm      {stack.fcm.url}/_kiln/messages   (recorded pushes)")
        print(f"logs     {stack.logs}")
        print("\ntry:\n  curl -s -X POST " + stack.ingress_url + "/v1/jobs \\\n"
              f"    -H 'Authorization: Bearer {token}' \\\n"
              "    -H 'Content-Type: application/json' \\\n"
              "    -d '{\"kind\": \"image\", \"prompt\": \"a blue cube\"}'\n"
              "  kiln watch JOB_ID\n\nCtrl-C stops everything.", flush=True)
        try:
            wait_until_interrupted()
        finally:
            DEV_FILE.unlink(missing_ok=True)
    return 0


def use_dev_stack() -> None:
    """Point this process at the stack ``kiln dev`` is running, if any."""
    if DEV_FILE.exists() and "FIRESTORE_EMULATOR_HOST" not in os.environ:
        os.environ.update(json.loads(DEV_FILE.read_text())["env"])


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
        self.state: dict[str, dict[str, Any]] = {}
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
                    self.state[doc.id] = doc.to_dict() or {}
                    self._draw(doc.id)
                    if len(self.state) == len(self.labels) and all(
                            j.get("status") in ("completed", "failed", "canceled")
                            for j in self.state.values()):
                        self.done.set()

    def _line(self, job_id: str) -> str:
        job = self.state.get(job_id, {})
        progress = int(job.get("progress") or 0)
        return (f"  {self.labels[job_id]:<6} {bar(progress)} {progress:3d}%  "
                f"{job.get('status', '…'):<10} {job.get('stage', '')}")

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
    use_dev_stack()
    from kiln.compose import get_services

    services = get_services()
    board = ProgressBoard(services.firestore, {args.job_id: "job"}).start()
    try:
        board.wait(timeout=24 * 3600)
    finally:
        board.stop()
    job = board.state.get(args.job_id, {})
    if job.get("error"):
        print(f"  error: {job['error'].get('code')}: {job['error'].get('message')}")
    if job.get("result"):
        print(f"  result: {job['result'].get('path')} ({job['result'].get('bytes')} bytes)")
    return 0 if job.get("status") == "completed" else 1


def run_demo(args: argparse.Namespace) -> int:
    if args.telegram:
        from kiln_dev.telegram_demo import telegram_demo

        return telegram_demo(Path(args.out))
    from kiln_dev.demo import demo

    return demo(Path(args.out), image_prompt=args.image_prompt, model_prompt=args.model_prompt)


if __name__ == "__main__":
    raise SystemExit(main())
