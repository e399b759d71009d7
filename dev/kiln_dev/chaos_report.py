"""What a chaos run found: one pass over Firestore, Storage and the FCM record.

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
checkpoint makes the next attempt create another).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("completed", "failed", "canceled")


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
            "secondProviderTasks": self.second_tasks, "unexpected": dict(self.unexpected),
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


def check(report: Report, *, jobs: dict[str, dict[str, Any]], docs: dict[str, dict[str, Any]],
          messages: list[dict[str, Any]], blobs: Any, healthy_tokens: dict[str, set[str]],
          submissions: dict[str, int]) -> Report:
    """Fill ``report`` from the final state.

    Args:
        jobs: job id → what was submitted (``uid``, ``expect``: the outcome it was built for).
        docs: job id → its Firestore document now.
        messages: the FCM server's record.
        blobs: a ``BlobStore`` reading the bucket directly.
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
        doc = docs.get(job_id) or {}
        status = doc.get("status")
        if status not in TERMINAL:
            report.lost.append(job_id)
            continue
        if status == "completed":
            report.completed += 1
        elif status == "canceled":
            report.canceled += 1
        else:
            code = (doc.get("error") or {}).get("code")
            if not code:
                report.uncoded += 1
            report.failed_by_code[str(code or "(none)")] += 1
        outcome = status if status != "failed" else f"failed:{(doc.get('error') or {}).get('code')}"
        if not _expected(info["expect"], outcome):
            report.unexpected[f"{info['expect']} → {outcome}"] += 1
        if any(n > 1 for n in pushes[job_id].values()) or len(push_types[job_id]) > 1 or (
                status == "canceled" and pushes[job_id]):
            report.duplicate_pushes.append(job_id)
        if status in ("completed", "failed") and healthy_tokens.get(info["uid"]) and not (
                healthy_tokens[info["uid"]] & set(pushes[job_id])):
            report.missing_pushes += 1
        _check_artifacts(report, job_id, info["uid"], doc, blobs)
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


def _check_artifacts(report: Report, job_id: str, uid: str, doc: dict[str, Any],
                     blobs: Any) -> None:
    names = [n.rsplit("/", 1)[-1] for n in blobs.list(f"generations/{uid}/{job_id}/")]
    result = doc.get("result") or {}
    if doc.get("status") != "completed":
        if names:
            report.orphan_artifacts += 1
        return
    allowed = {result.get("path", "").rsplit("/", 1)[-1], "thumb.png"}
    stored = blobs.read(result["path"]) if result.get("path") else b""
    if (set(names) - allowed or hashlib.sha256(stored).hexdigest() != result.get("sha256")
            or len(stored) != result.get("bytes")):
        report.duplicate_artifacts.append(job_id)
