"""Worker memory benchmark: a GLB of 10 MB, 100 MB and 1 GB, provider → worker → bucket.

``python -m kiln_dev.bench_memory [--sizes 10m,100m,1g]`` starts a local stack (sweeper off)
with the local provider server as its companion, and for each size creates a model job
and runs the real worker code (``kiln.runtime.worker.run_job`` with
``KILN_MODEL_PROVIDER=taskserver``) in a fresh child process, which reports its peak
resident memory (``VmHWM`` from ``/proc/self/status``). The table shows the transfer
time, throughput and that peak; the budget is a flat peak under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

BUDGET_MB = 150.0
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def vm_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmHWM``, ``VmRSS``) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def run_child(job_id: str) -> None:
    """In the child: run one job with the real worker, print timings and memory as JSON."""
    from kiln.compose import Services
    from kiln.runtime.worker import run_job
    from kiln.settings import Settings

    # A child process: its environment (the stack's client_env) is its configuration.
    services = Services(Settings.from_env())
    _ = (services.store, services.blobs, services.provider("model"))
    baseline = vm_kib("VmRSS")
    started = time.monotonic()
    outcome = run_job(job_id, services)
    print(json.dumps({"outcome": str(outcome), "seconds": time.monotonic() - started,
                      "baseline_kib": baseline, "peak_kib": vm_kib("VmHWM")}))


def measure(sizes: list[str]) -> list[dict[str, Any]]:
    from kiln.adapters.clock import utcnow
    from kiln.adapters.storage import CloudStorage
    from kiln.core import lifecycle
    from kiln.core.job import new_job_id
    from kiln.core.requests import JobRequest
    from kiln_dev.stack import LocalStack, StackConfig
    from kiln_dev.standins.provider import ProviderServer

    server = ProviderServer(task_seconds=0.2)
    env = {"KILN_MODEL_PROVIDER": "taskserver", "KILN_LOG_LEVEL": "WARNING",
           "KILN_PROGRESS_INTERVAL_SECONDS": "1"}
    rows = []
    with LocalStack(StackConfig(env=env, companions=[server], sweep_interval=0)) as stack:
        services = stack.services()
        child_env = {**os.environ, **stack.client_env()}
        for size in sizes:
            uid = "bench-memory"
            job_id = new_job_id(uid)
            # Created, never published: only the child's worker runs it.
            services.store.create(lifecycle.new_job(
                job_id=job_id, uid=uid, channel="api",
                request=JobRequest("model", f"bench [size:{size}]", {}), now=utcnow(),
                policy=services.policy))
            child = subprocess.run([sys.executable, "-m", "kiln_dev.bench_memory", "--child", job_id],
                                   env=child_env, capture_output=True, text=True, check=False)
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
            if child.returncode or not lines:
                raise SystemExit(f"worker child failed for {size}:\n{child.stderr[-3000:]}")
            report = json.loads(lines[-1])
            job = services.store.get(job_id)
            if report["outcome"] != "completed" or job is None or not job.result:
                error = job.error if job is not None else None
                raise SystemExit(f"job for {size} ended {report['outcome']}: {error}")
            nbytes = int(job.result["bytes"])
            rows.append({"size": size, "bytes": nbytes, "seconds": report["seconds"],
                         "mb_per_s": nbytes / 1e6 / report["seconds"],
                         "baseline_mb": report["baseline_kib"] / 1024,
                         "peak_mb": report["peak_kib"] / 1024})
            blobs = services.blobs
            assert isinstance(blobs, CloudStorage)  # the port has no delete: the real bucket
            blobs.delete(job.result["path"])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | bytes | seconds | MB/s | RSS before job (MB) | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['bytes']:,} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} "
                     f"| {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10m,100m,1g",
                        help="comma-separated sizes with k/m/g suffixes (MiB, GiB)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child)
        return 0
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        if not re.fullmatch(r"\d+[kmg]?", size):
            parser.error(f"bad size {size!r}")
    rows = measure(sizes)
    print(table(rows))
    worst = max(r["peak_mb"] for r in rows)
    verdict = "within" if worst < BUDGET_MB else "OVER"
    print(f"\npeak RSS {worst:.0f} MB: {verdict} the {BUDGET_MB:.0f} MB budget")
    return 0 if worst < BUDGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
