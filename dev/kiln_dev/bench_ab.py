"""``make bench-ab``: this working tree's ingress against another revision's, side by side
on one local stack (docs/benchmarks.md, the tenth pass).

Whole ``make bench`` runs move by more than most changes to the ingress are worth: the
machine's speed changes from hour to hour. Here both ingresses share the emulators, the
worker and the hour. The other revision (``--base``, default ``HEAD``) is checked out in
a git worktree and served by a second ingress process with the same command and
environment as the stack's own, so only the code differs. Each sends as a user of its
own (its own quota tickets). Per round and level, each takes a turn of ``--requests``
``POST /v1/jobs`` at the level's concurrency (the order rotating), with the worker held
off as ``make bench`` holds it; its gunicorn worker's CPU per job is read from ``/proc``.
Prints every round, then per level the medians and in how many rounds this tree used
less CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln_dev.bench import SETTLE, completed_jobs
from kiln_dev.bench_e2e import warm_emulators
from kiln_dev.bench_load import cpu_seconds, job_poster, median, metered_loop, wait_for
from kiln_dev.stack import LocalStack, StackConfig, free_port

REPO = Path(__file__).resolve().parents[2]
NAMES = ("this", "base")


class Turn(NamedTuple):
    cpu_ms: float  # the ingress's gunicorn worker, per job
    p50_ms: float
    p99_ms: float


def in_order(round_no: int, level: int, names: Sequence[str] = NAMES) -> list[str]:
    """Who goes first rotates with the round and the level, so neither always follows
    the other's leftovers."""
    k = (round_no + level) % len(names)
    return [*names[k:], *names[:k]]


def summary(turns: dict[tuple[str, int], list[Turn]], levels: Sequence[int]) -> list[str]:
    """Per level: each side's medians, this side's CPU over the base's, and in how many
    rounds this side used less CPU."""
    lines = []
    for level in levels:
        this, base = turns[("this", level)], turns[("base", level)]
        cpu = {name: median(t.cpu_ms for t in turns[(name, level)]) for name in NAMES}
        lower = sum(a.cpu_ms < b.cpu_ms for a, b in zip(this, base, strict=True))
        lines.append(
            f"{level:>3} clients: CPU per job {cpu['this']:.3f} against {cpu['base']:.3f} ms "
            f"({cpu['this'] / cpu['base']:.2f}×; lower in {lower} of {len(this)} rounds); "
            f"p50 {median(t.p50_ms for t in this):.1f} against "
            f"{median(t.p50_ms for t in base):.1f} ms, p99 {median(t.p99_ms for t in this):.1f} "
            f"against {median(t.p99_ms for t in base):.1f} ms")
    return lines


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a temporary git worktree, removed after."""
    path = Path(tempfile.mkdtemp(prefix="kiln-ab-"))
    added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f",
                            str(path), revision], capture_output=True, text=True)
    if added.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise SystemExit(f"bench-ab: cannot check out {revision}: {added.stderr.strip()}")
    try:
        yield path
    finally:
        removed = subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                  str(path)], capture_output=True, text=True)
        if removed.returncode != 0:
            print(f"bench-ab: the worktree {path} was left: {removed.stderr.strip()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process started in a session of its own, and its children."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def serve_base(stack: LocalStack, tree: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second ingress on ``tree``'s code: the stack's ingress command and environment,
    another port. Its process and URL."""
    spec = stack._specs["ingress"]
    port = free_port(stack.config.host)
    cmd = list(spec["cmd"])
    cmd[cmd.index("--source") + 1] = str(tree / "dev" / "kiln_dev" / "functions.py")
    cmd[cmd.index("--port") + 1] = str(port)
    env = {**spec["env"], "PYTHONPATH": f"{tree / 'shared'}:{tree / 'dev'}"}
    log = open(stack.logs / "ingress-base.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=stack.workdir, start_new_session=True)
    log.close()
    url = f"http://{stack.config.host}:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the base ingress exited; see {stack.logs / 'ingress-base.log'}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        return False

    try:
        wait_for(up, 60, "the base ingress")
    except BaseException:
        stop(proc)
        raise
    return proc, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench_ab", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the revision to compare against")
    parser.add_argument("--levels", default="1,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300, help="per side, round and level")
    parser.add_argument("--warm-emulators", type=int, default=5000, metavar="N")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    env = {"KILN_OFFLINE_IMAGE_SECONDS": "0", "KILN_OFFLINE_MODEL_SECONDS": "0"}
    config = StackConfig(env=env, sweep_interval=0, ingress_threads=16, push_relay=8)
    with worktree(args.base) as tree, LocalStack(config) as stack:
        warm_emulators(stack, args.warm_emulators)
        base, base_url = serve_base(stack, tree)
        try:
            urls = {"this": stack.ingress_url, "base": base_url}
            pgids = {"this": stack.procs["ingress"].pid, "base": base.pid}
            sent = 0

            def turn(name: str, concurrency: int, requests: int) -> Turn:
                nonlocal sent
                token = emulator_id_token(f"bench-ab-{name}", stack.config.project)
                assert stack.relay is not None
                stack.relay.hold()
                try:
                    with job_poster(urls[name], token, concurrency, f"ab {name}") as post:
                        run, cpu = metered_loop(post, requests, concurrency,
                                                lambda: cpu_seconds([pgids[name]]))
                finally:
                    stack.relay.release()
                sent += requests + concurrency  # closed_loop's warm-up, one per client, too
                wait_for(lambda: completed_jobs(stack) >= sent, 900, "the worker")
                time.sleep(SETTLE)  # the jobs' last steps, before the next turn's meter
                return Turn(cpu, run.p50, run.p99)

            for name in NAMES:
                turn(name, 4, 200)  # warm-up, not recorded
            turns: dict[tuple[str, int], list[Turn]] = {}
            for round_no in range(args.rounds):
                for level in levels:
                    shown = []
                    for name in in_order(round_no, level):
                        result = turn(name, level, args.requests)
                        turns.setdefault((name, level), []).append(result)
                        shown.append(f"{name} {result.cpu_ms:.3f} ms/job "
                                     f"p50 {result.p50_ms:.1f} p99 {result.p99_ms:.1f}")
                    print(f"round {round_no + 1}, {level} clients: " + "; ".join(shown),
                          flush=True)
            print(f"\nthis tree against {args.base} (medians of {args.rounds} rounds):")
            for line in summary(turns, levels):
                print(line)
        finally:
            stop(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
