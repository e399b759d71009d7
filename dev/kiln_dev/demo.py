"""``kiln demo``: real jobs through the whole local stack, watched live.

Starts the stack, registers a device for a local test user, submits one image and one
GLB model job through the HTTP API, shows their progress from Firestore snapshot
listeners, saves the results under ``./out/``, prints a summary, stops the stack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import Job, JobStatus
from kiln.core.lifecycle import NOTIFY_CLAIMED
from kiln_dev.cli import ProgressBoard
from kiln_dev.stack import LocalStack, StackConfig

DEMO_UID = "demo-user"
TIMEOUT = 120.0


def demo(out: Path, *, image_prompt: str, model_prompt: str) -> int:
    t0 = time.monotonic()
    print("Kiln demo: starting the local stack (Firestore, Pub/Sub, Storage emulators, "
          "FCM stand-in, ingress and worker functions)…", flush=True)
    with LocalStack(StackConfig()) as stack:
        started = time.monotonic() - t0
        print(f"stack ready in {started:.1f}s  (ingress {stack.ingress_url})\n", flush=True)
        services = stack.services()
        services.firestore.collection("users").document(DEMO_UID).collection(
            "devices").document("demo-phone").set(
            {"fid": "demo-fid", "platform": "android", "updatedAt": time.time()})
        token = emulator_id_token(DEMO_UID, stack.config.project)
        jobs: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=stack.ingress_url, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for kind, prompt in (("image", image_prompt), ("model", model_prompt)):
                sent = time.monotonic()
                response = http.post("/v1/jobs", json={"kind": kind, "prompt": prompt})
                ack_ms = (time.monotonic() - sent) * 1000
                response.raise_for_status()
                job_id = response.json()["jobId"]
                jobs[job_id] = {"kind": kind, "prompt": prompt, "sent": sent, "ack_ms": ack_ms}
                print(f"POST /v1/jobs {kind:<5} → {response.status_code} {response.json()} "
                      f"in {ack_ms:.0f} ms", flush=True)
        print()
        board = ProgressBoard(services.firestore,
                              {job_id: info["kind"] for job_id, info in jobs.items()})
        board.start()
        finished = board.wait(TIMEOUT)
        board.stop()
        _wait_notified(services, list(jobs))
        done_at = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        print("\nsummary")
        ok = finished
        for job_id, info in jobs.items():
            job = services.store.get(job_id)
            status = job.status.value if job is not None else "?"
            line = f"  {info['kind']:<5} {job_id}  {status:<9}"
            result = job.result if job is not None else None
            if job is not None and job.status is JobStatus.COMPLETED and result:
                target = out / f"{job_id}-{Path(result['path']).name}"
                target.write_bytes(services.blobs.read(result["path"]))
                line += (f" {result['bytes']:>8,} bytes  ack {info['ack_ms']:.0f} ms  "
                         f"end-to-end {_seconds(job):.1f}s  → {target}")
            else:
                ok = False
                line += f" {json.dumps(job.error if job is not None else None)}"
            print(line)
        pushes = stack.fcm.messages
        print(f"  pushes recorded by the FCM stand-in: {len(pushes)} "
              f"({', '.join(p['message']['data']['type'] for p in pushes)})")
        print(f"  total {done_at - t0:.1f}s (stack start {started:.1f}s); stopping the stack…")
    print("done." if ok else "demo FAILED", flush=True)
    return 0 if ok else 1


def _wait_notified(services: Any, job_ids: list[str], timeout: float = 15.0) -> None:
    """The push is sent just after the completing write: wait until it went (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [services.store.get(j) for j in job_ids]
        if all(job is None or (job.server.notify or {}).get("state") != NOTIFY_CLAIMED
               for job in jobs):
            return
        time.sleep(0.1)


def _seconds(job: Job) -> float:
    if job.created_at is None or job.completed_at is None:
        return float("nan")
    return float((job.completed_at - job.created_at).total_seconds())
