"""What a chaos run found: one pass over the jobs (read typed, through the job store),
Storage and the FCM record.

The checks are the promises Kiln makes, measured from the outside:

- every accepted job ends (``lost`` = not terminal when the drain timed out);
- every failure says why (``uncoded`` = failed without ``error.code``);
- at most one completion push per job and device (``duplicate_pushes``), and never both a
  "completed" and a "failed" push for one job;
- one artifact per job: the object at the job's result path is the one the job
  records (same SHA-256), and nothing else is under the job's folder
  (``duplicate_artifacts``).

Informational, not failures: ``missing_pushes`` (at most once means a crash between the
claim and the send may lose one), ``orphan_artifacts`` (a job canceled or failed after
its upload), ``second_tasks`` (a worker killed between a task's creation and its
checkpoint makes the next attempt create another), ``unsent_notifications`` (an ended
job whose notification claim never recorded an outcome: the worker died after claiming,
or after taking it to send).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from kiln.core.job import Job, JobStatus
from kiln.core.lifecycle import NOTIFY_CLAIMED, NOTIFY_SENDING
from kiln.providers.base import EXTENSIONS
from kiln.runtime.results import result_path, thumbnail_path


@dataclass
class Report:
    accepted: int = 0
    rejected: int = 0
    completed: int = 0
    canceled: int = 0
    failed_by_code: Counter[str] = field(default_factory=Counter)
    uncoded: int = 0
    lost: list[str] = field(default_factory=list)
    duplicate_pushes: list[str] = field(default_factory=list)
    duplicate_artifacts: list[str] = field(default_factory=list)
    missing_pushes: int = 0
    orphan_artifacts: int = 0
    second_tasks: int = 0
    unsent_notifications: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    drain_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate_pushes or self.duplicate_artifacts or self.uncoded)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted, "rejected": self.rejected, "completed": self.completed,
            "failed": self.failed, "failedByCode": dict(self.failed_by_code),
            "canceled": self.canceled, "uncoded": self.uncoded, "lost": self.lost,
            "duplicatePushes": self.duplicate_pushes,
            "duplicateArtifacts": self.duplicate_artifacts,
            "missingPushes": self.missing_pushes, "orphanArtifacts": self.orphan_artifacts,
            "secondProviderTasks": self.second_tasks,
            "unsentNotifications": self.unsent_notifications, "unexpected": dict(self.unexpected),
            "faults": dict(self.faults), "drainSeconds": round(self.drain_seconds, 1),
            "totalSeconds": round(self.total_seconds, 1), "ok": self.ok,
        }

    def table(self) -> str:
        rows: list[tuple[str, Any]] = [
            ("jobs accepted", self.accepted),
            ("  rejected at submit (not accepted)", self.rejected),
            ("completed", self.completed),
            ("failed", self.failed),
            *[(f"  failed: {code}", n) for code, n in sorted(self.failed_by_code.items())],
            ("canceled", self.canceled),
            ("LOST (never terminal)", len(self.lost)),
            ("failures without a code", self.uncoded),
            ("DUPLICATE artifacts", len(self.duplicate_artifacts)),
            ("DUPLICATE pushes", len(self.duplicate_pushes)),
            ("missing pushes (at most once; info)", self.missing_pushes),
            ("orphan artifacts of unfinished jobs (info)", self.orphan_artifacts),
            ("jobs with a second provider task (info)", self.second_tasks),
            ("notifications claimed, never sent (info)", self.unsent_notifications),
            *[(f"  unexpected outcome: {k} (info)", n) for k, n in sorted(self.unexpected.items())],
            ("time to drain (s)", f"{self.drain_seconds:.1f}"),
            ("total run (s)", f"{self.total_seconds:.1f}"),
        ]
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        width = max(len(name) for name, _ in rows)
        lines = [f"{'':-<{width + 12}}", f"{'chaos result':<{width}}  {'':>8}"]
        lines += [f"{name:<{width}}  {value!s:>8}" for name, value in rows]
        lines += [f"{'':-<{width + 12}}", f"faults injected: {faults}",
                  "RESULT: " + ("OK" if self.ok else "FAILED")]
        return "\n".join(lines)


def check(report: Report, *, jobs: dict[str, dict[str, Any]], found: dict[str, Job],
          messages: list[dict[str, Any]], blobs: Any, healthy_tokens: dict[str, set[str]],
          submissions: dict[str, int]) -> Report:
    """Fill ``report`` from the final state.

    Args:
        jobs: job id → what was submitted (``uid``, ``expect``: the outcome it was built for).
        found: job id → the job now, as the job store reads it (absent: no such job).
        messages: the FCM server's record.
        blobs: a ``BlobStore`` reading the bucket directly (with ``list``).
        healthy_tokens: uid → FIDs and tokens that FCM accepts.
        submissions: job id → provider tasks created for it.
    """
    pushes: dict[str, Counter[str]] = defaultdict(Counter)
    push_types: dict[str, set[str]] = defaultdict(set)
    for item in messages:
        message = item.get("message") or {}
        data = message.get("data") or {}
        job_id = data.get("jobId")
        if job_id in jobs:
            pushes[job_id][str(message.get("fid") or message.get("token"))] += 1
            push_types[job_id].add(str(data.get("type")))
    for job_id, info in jobs.items():
        job = found.get(job_id)
        if job is None or not job.terminal:
            report.lost.append(job_id)
            continue
        code = (job.error or {}).get("code")
        if job.status is JobStatus.COMPLETED:
            report.completed += 1
        elif job.status is JobStatus.CANCELED:
            report.canceled += 1
        else:
            if not code:
                report.uncoded += 1
            report.failed_by_code[str(code or "(none)")] += 1
        outcome = job.status.value if job.status is not JobStatus.FAILED else f"failed:{code}"
        if not _expected(info["expect"], outcome):
            report.unexpected[f"{info['expect']} → {outcome}"] += 1
        if any(n > 1 for n in pushes[job_id].values()) or len(push_types[job_id]) > 1 or (
                job.status is JobStatus.CANCELED and pushes[job_id]):
            report.duplicate_pushes.append(job_id)
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED) and healthy_tokens.get(info["uid"]) and not (
                healthy_tokens[info["uid"]] & set(pushes[job_id])):
            report.missing_pushes += 1
        if (job.server.notify or {}).get("state") in (NOTIFY_CLAIMED, NOTIFY_SENDING):
            report.unsent_notifications += 1  # (sending: its sender died, or its record)
        _check_artifacts(report, job, blobs)
        if submissions.get(job_id, 0) > 1:
            report.second_tasks += 1
    return report


def _expected(expect: str, outcome: str) -> bool:
    if expect == "cancel":
        return outcome in ("canceled", "completed")  # a cancel may lose the race to the end
    if expect == "complete":
        return outcome == "completed"
    if expect == "hang":
        return outcome in ("failed:provider_timeout", "failed:deadline_exceeded")
    return outcome.startswith("failed:")


def _check_artifacts(report: Report, job: Job, blobs: Any) -> None:
    folder = result_path(job.uid, job.id, "").rsplit("/", 1)[0] + "/"  # the job's folder
    names = [n.rsplit("/", 1)[-1] for n in blobs.list(folder)]
    if job.status is not JobStatus.COMPLETED or not job.result:
        if names:
            report.orphan_artifacts += 1
        return
    result = job.result
    expected = result_path(job.uid, job.id, EXTENSIONS[job.kind])
    allowed = {path.rsplit("/", 1)[-1] for path in (expected, thumbnail_path(job.uid, job.id))}
    stored = blobs.read(expected) if result.get("path") == expected else b""
    if (set(names) - allowed or hashlib.sha256(stored).hexdigest() != result.get("sha256")
            or len(stored) != result.get("bytes")):
        report.duplicate_artifacts.append(job.id)
