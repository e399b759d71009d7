"""A job's timeline on fakes: every step rides on a write the job makes anyway, it stays
out of the client-readable document, and ``kiln trace`` draws it."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from rig import Rig, SyncFake

from kiln.core import timeline
from kiln.core.errors import PermanentError, RetryableError
from kiln.ops.trace import waterfall
from kiln.runtime import actions
from kiln.runtime.worker import RunOutcome, handle_message
from kiln_dev.cli import main


def push(job_id: str, published: str) -> dict[str, object]:
    data = base64.b64encode(json.dumps({"jobId": job_id}).encode()).decode()
    return {"message": {"data": data, "publishTime": published}}


def test_a_completed_job_records_every_step_without_a_write_of_its_own(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an accepted job, when its push arrives and it completes, then its server state
    holds accepted, published (the message's time), delivered, claimed, submitted,
    generated, stored, completed and notified, in that order; the public document has no timeline; and its
    documents were written exactly as often as the same run writes with no steps."""
    job_id = rig.submit()
    published = (rig.clock.now() + dt.timedelta(milliseconds=3)).strftime(
        "%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    rig.clock.advance(0.1)
    assert handle_message(push(job_id, published), rig.services) is RunOutcome.COMPLETED
    steps = timeline.steps(rig.job(job_id).server.timeline)
    assert [s.name for s in steps] == ["accepted", "published", "delivered", "claimed",
                                       "submitted", "generated", "stored", "completed",
                                       "notified"]
    assert steps[1].offset_ms == pytest.approx(3.0, abs=0.01)
    assert steps[-1].offset_ms >= 2000  # the fake provider's two 1 s steps are inside
    assert timeline.FIELD not in rig.store.docs[job_id]
    monkeypatch.setattr(timeline, "fields", lambda steps: {})
    bare = rig.submit(prompt="the same job, recording nothing")
    handle_message(push(bare, published), rig.services)
    assert set(rig.store.servers[bare][timeline.FIELD]) == {"accepted"}  # the create
    assert rig.store.server_writes[job_id] == rig.store.server_writes[bare]
    assert rig.store.public_writes[job_id] == rig.store.public_writes[bare]


def test_completed_is_the_time_of_the_completions_decision(rig: Rig) -> None:
    """Given a completion whose read of the job takes 250 ms (a slow store), then the
    timeline's ``completed`` is after that read, not the moment the result was stored:
    stored → completed shows the completion's own time."""
    job_id = rig.submit()
    real_get, real_put, stored = rig.store.get, rig.services.blobs.put_stream, []

    def put_stream(*args: Any, **kwargs: Any) -> Any:
        stored.append(args[0])
        return real_put(*args, **kwargs)

    def slow_get(read_id: str) -> object:
        if stored:
            rig.clock.advance(0.25)  # the completion's read: the result is stored
        return real_get(read_id)

    rig.services.blobs.put_stream = put_stream  # type: ignore[method-assign]
    rig.store.get = slow_get  # type: ignore[method-assign]
    assert handle_message(push(job_id, ""), rig.services) is RunOutcome.COMPLETED
    at = {s.name: s.offset_ms for s in timeline.steps(rig.job(job_id).server.timeline)}
    assert at["completed"] - at["stored"] >= 250


def test_a_retried_job_keeps_both_attempts(rig: Rig) -> None:
    """Given a first attempt that fails retryably, when the job runs again, then the
    timeline keeps the first attempt's steps and adds the second's, numbered."""
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    provider.error = RetryableError("busy", code="provider_busy")
    job_id = rig.submit()
    with pytest.raises(RetryableError):
        handle_message(push(job_id, ""), rig.services)
    provider.error = None
    rig.clock.advance(600)
    assert handle_message(push(job_id, ""), rig.services) is RunOutcome.COMPLETED
    names = [s.name for s in timeline.steps(rig.job(job_id).server.timeline)]
    assert names[:4] == ["accepted", "delivered", "claimed", "submitted"]
    assert "released" in names and names.index("released") < names.index("claimed_2")
    assert names[-2:] == ["completed", "notified"]


def test_an_explicit_retry_starts_a_new_runs_timeline_and_keeps_the_last(rig: Rig) -> None:
    """Given a job that failed for good, when its owner retries it and it completes, then
    its timeline reads accepted, retried, then the new run's steps from ``claimed`` to
    ``completed`` (no stale ``failed`` among them), and the failed run's steps are kept
    as ``earlierRun``."""
    provider = rig.providers["image"]
    assert isinstance(provider, SyncFake)
    provider.error = PermanentError("refused", code="content_refused")
    job_id = rig.submit()
    assert handle_message(push(job_id, ""), rig.services) is RunOutcome.FAILED
    failed = dict(rig.job(job_id).server.timeline or {})
    provider.error = None
    rig.clock.advance(60)
    assert actions.retry(rig.services, job_id, by="owner").changed
    assert handle_message(push(job_id, ""), rig.services) is RunOutcome.COMPLETED
    names = [s.name for s in timeline.steps(rig.job(job_id).server.timeline)]
    assert names[:4] == ["accepted", "retried", "delivered", "claimed"], names
    assert "failed" not in names and names[-2:] == ["completed", "notified"]
    assert rig.store.servers[job_id]["earlierRun"] == failed
    assert "failed" in failed and failed["accepted"] == rig.job(job_id).server.timeline["accepted"]


def test_pubsub_publish_times_keep_their_microseconds() -> None:
    at = timeline.parse_time("2026-12-06T01:02:03.123456789Z")
    assert at == dt.datetime(2026, 12, 6, 1, 2, 3, 123456, tzinfo=dt.UTC)
    assert timeline.parse_time("garbage") is None and timeline.parse_time(None) is None


def test_kiln_trace_draws_a_waterfall(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """Given a completed job, when an operator runs ``kiln trace``, then each step is one
    row with its offset, in order, and the bars move right as time passes."""
    job_id = rig.submit()
    rig.clock.advance(0.05)
    handle_message(push(job_id, ""), rig.services)
    assert main(["trace", job_id], services=lambda: rig.services) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if "█" in line or "▏" in line]
    assert [row.split()[0] for row in rows] == [
        "accepted", "delivered", "claimed", "submitted", "generated", "stored", "completed",
        "notified"]
    starts = [len(row) - len(row.rstrip("█▏").rstrip()) for row in rows]
    assert starts == sorted(starts)
    assert main(["trace", "nosuchjob0001"], services=lambda: rig.services) == 1


def test_the_waterfall_scales_bars_to_the_width() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    recorded = {"accepted": t0, "claimed": t0 + dt.timedelta(milliseconds=100),
                "completed": t0 + dt.timedelta(milliseconds=400)}
    rows = waterfall(timeline.rows(recorded), width=40)
    assert rows[1].endswith("▏") and rows[2].endswith("█" * 10)
    assert rows[3].endswith(" " * 10 + "█" * 30)


def test_kiln_jobs_list_shows_the_newest_jobs_of_any_owner_or_status(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """``kiln jobs list``: the newest jobs first, of every owner (the store's first 500 by
    id, sorted, could leave the newest out), and with --status the newest of that status."""
    ids = []
    for n in range(6):
        ids.append(rig.submit(uid=f"user{n % 2}"))
        rig.clock.advance(1.0)
    assert main(["jobs", "list", "--limit", "3"], services=lambda: rig.services) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids[::-1][:3]
    assert main(["jobs", "list", "--uid", "user0", "--status", "pending"],
                services=lambda: rig.services) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids[-2::-2]  # user0: n = 4, 2, 0
