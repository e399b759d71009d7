"""The worker on fakes: every way a delivery can go, exactly one end and one notification."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from typing import Any

import pytest
from rig import Rig, SyncFake, build_rig, real_artifact

from kiln.core import lifecycle
from kiln.core.errors import ConfigError, PermanentError, RetryableError
from kiln.core.job import Change, JobStatus
from kiln.runtime.worker import RunOutcome, handle_message, run_job


def message(job_id: str) -> dict[str, object]:
    return {"message": {"data": base64.b64encode(json.dumps({"jobId": job_id}).encode()).decode()}}


def test_an_image_job_completes_with_its_result_and_one_push(rig: Rig) -> None:
    """Given a pending image job and a device, when delivered, then it completes with a
    validated PNG and thumbnail in the bucket, progress 100, and one push is sent."""
    rig.devices.register("alice", "phone", fid="fid-1", platform="android")
    job_id = rig.submit()
    assert handle_message(message(job_id), rig.services) is RunOutcome.COMPLETED
    job = rig.job(job_id)
    assert (job.status, job.progress, job.stage, job.attempts) == (JobStatus.COMPLETED, 100, "done", 1)
    assert job.result is not None and rig.blobs.exists(job.result["path"])
    assert job.result["path"] == f"generations/alice/{job_id}/result.png"
    assert rig.blobs.exists(job.result["thumbnailPath"])
    assert [p.data["type"] for p in rig.push.sent] == ["generation_completed"]
    assert job.server.notify is not None and job.server.notify["state"] == "sent"
    assert job.server.lease_owner is None


def test_a_redelivery_of_an_ended_job_does_nothing(rig: Rig) -> None:
    job_id = rig.submit()
    run_job(job_id, rig.services)
    assert run_job(job_id, rig.services) is RunOutcome.TERMINAL
    assert len(rig.push.sent) == 0 or len(rig.push.sent) == 1  # no devices: no sends at all
    assert rig.providers["image"].calls == 1


def test_poison_and_missing_messages_are_acked(rig: Rig) -> None:
    import base64

    assert handle_message({"message": {"data": "bm90IGpzb24="}}, rig.services) is RunOutcome.POISON
    assert handle_message(message("nosuchjob123"), rig.services) is RunOutcome.MISSING
    nested = base64.b64encode(b"[" * 200_000).decode()  # deeper than Python's stack
    assert handle_message({"message": {"data": nested}}, rig.services) is RunOutcome.POISON


def test_progress_is_coalesced_and_passed_to_the_channel(rig: Rig) -> None:
    """Progress is written at most once per interval and only when it moved; a channel job
    hears each written step; a failing channel never fails the job."""
    provider = SyncFake(rig.clock, steps=[(10, "generating"), (11, "generating"),
                                          (50, "generating"), (50, "generating")],
                        step_seconds=0.6)
    rig.providers["image"] = provider
    job_id = rig.submit(channel="telegram")
    run_job(job_id, rig.services)
    heard = [p for _id, p, _s in rig.channel.progress]
    assert heard == sorted(heard) and 0 < len(heard) < 5
    assert rig.channel.finished == [job_id]
    rig2 = build_rig()
    rig2.channel.fail_progress = True
    other = rig2.submit(channel="telegram")
    assert run_job(other, rig2.services) is RunOutcome.COMPLETED


def test_a_permanent_failure_fails_once_with_the_providers_reason(rig: Rig) -> None:
    rig.providers["image"] = SyncFake(rig.clock, error=PermanentError(
        "The provider refused this prompt.", code="content_refused"))
    rig.devices.register("alice", "phone", token="tok")
    job_id = rig.submit()
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error == {
        "code": "content_refused", "message": "The provider refused this prompt.", "retryable": False}
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"]


def test_retryable_failures_back_off_then_give_up_readably(rig: Rig) -> None:
    """A retryable failure releases the job (the delivery nacks); a redelivery in backoff
    nacks without spending an attempt; after the last attempt the job fails and says so."""
    rig.providers["image"] = SyncFake(rig.clock, error=RetryableError(
        "The provider is unavailable right now.", code="provider_unavailable"))
    job_id = rig.submit()
    for attempt in (1, 2):
        with pytest.raises(RetryableError):
            run_job(job_id, rig.services)
        assert (rig.job(job_id).status, rig.job(job_id).attempts) == (JobStatus.PENDING, attempt)
        with pytest.raises(RetryableError) as waiting:
            run_job(job_id, rig.services)
        assert waiting.value.code == "backoff" and rig.job(job_id).attempts == attempt
        rig.clock.advance(rig.services.policy.backoff(attempt))
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    job = rig.job(job_id)
    assert job.error is not None and job.error["code"] == "provider_unavailable"
    assert job.error["message"].endswith("Gave up after 3 attempts.")


def test_an_unexpected_error_is_retried_as_internal(rig: Rig) -> None:
    rig.providers["image"] = SyncFake(rig.clock, error=ZeroDivisionError("bug"))
    job_id = rig.submit()
    with pytest.raises(RetryableError) as caught:
        run_job(job_id, rig.services)
    assert caught.value.code == "internal"
    assert rig.job(job_id).error == {"code": "internal", "retryable": True,
                                     "message": "Something went wrong on our side."}


def test_a_generator_past_its_budget_is_released(rig: Rig) -> None:
    rig = build_rig(worker_budget_seconds=5.0)
    rig.providers["image"] = SyncFake(rig.clock, hang=True)
    job_id = rig.submit()
    with pytest.raises(RetryableError) as caught:
        run_job(job_id, rig.services)
    assert caught.value.code == "provider_timeout"


def test_an_unconfigured_provider_fails_the_job_readably() -> None:
    def broken(_settings: object) -> object:
        raise ConfigError("KILN_MESHY_API_KEY must be set")

    rig = build_rig(factories={"model": broken})
    job_id = rig.submit(kind="model")
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    assert rig.job(job_id).error == {"code": "provider_unconfigured", "retryable": False,
                                     "message": "This service is not set up to make 3D models right now."}


def test_cancel_while_running_stops_the_generator_and_sends_nothing(rig: Rig) -> None:
    """A cancel noticed at a progress write stops the run: canceled, no result, no push."""
    provider = SyncFake(rig.clock, hang=True)
    rig.providers["image"] = provider
    job_id = rig.submit()
    original = provider.generate

    def cancel_midway(request, on_progress, should_stop):  # type: ignore[no-untyped-def]
        rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
        return original(request, on_progress, should_stop)

    provider.generate = cancel_midway  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.CANCELED
    job = rig.job(job_id)
    assert job.status is JobStatus.CANCELED and job.result is None and rig.push.sent == []


def test_a_cancel_between_the_completions_read_and_its_write_wins(rig: Rig) -> None:
    """The completion is decided on a plain read and written on it. The owner cancels
    just after that read: the completion does not land, the job ends canceled, no push."""
    rig.devices.register("alice", "phone", fid="fid-1", platform="android")
    job_id = rig.submit()
    transact = rig.store.transact
    seen_at_completion: list[JobStatus] = []

    def cancel_first(tx_job_id: str, decide, *, seen=None):  # type: ignore[no-untyped-def]
        if seen is not None and seen.status is JobStatus.PROCESSING:  # the completion's
            seen_at_completion.append(seen.status)
            transact(tx_job_id, lambda job: (lifecycle.cancel(job), None))
        return transact(tx_job_id, decide, seen=seen)

    rig.store.transact = cancel_first  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.CANCELED
    job = rig.job(job_id)
    assert seen_at_completion == [JobStatus.PROCESSING]
    assert job.status is JobStatus.CANCELED and job.result is None and rig.push.sent == []


def test_a_lost_lease_stops_without_writing(rig: Rig) -> None:
    provider = SyncFake(rig.clock, hang=True)
    rig.providers["image"] = provider
    job_id = rig.submit()
    original = provider.generate

    def stolen(request, on_progress, should_stop):  # type: ignore[no-untyped-def]
        rig.store.apply(job_id, Change({}, {"leaseOwner": "someone-else"}))
        return original(request, on_progress, should_stop)

    provider.generate = stolen  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    assert rig.job(job_id).status is JobStatus.PROCESSING  # the other worker's now


def _slow_download(rig: Rig, seconds_per_chunk: float, on_chunk=None):  # type: ignore[no-untyped-def]
    """A provider whose artifact arrives slowly: each chunk advances the fake clock (a
    download from the provider's CDN streaming into the bucket); ``on_chunk(i)`` runs
    before chunk ``i`` is handed on."""
    provider = SyncFake(rig.clock)
    original = provider.generate

    def generate(request, on_progress, should_stop):  # type: ignore[no-untyped-def]
        artifact = original(request, on_progress, should_stop)
        data = b"".join(artifact.chunks)
        pieces = [data[i:i + 64] for i in range(0, len(data), 64)]

        def chunks():  # type: ignore[no-untyped-def]
            for i, piece in enumerate(pieces):
                if on_chunk is not None:
                    on_chunk(i)
                rig.clock.advance(seconds_per_chunk)
                yield piece

        return dataclasses.replace(artifact, chunks=chunks(), size=None)

    provider.generate = generate  # type: ignore[method-assign]
    rig.providers["image"] = provider


def test_an_upload_longer_than_the_lease_keeps_the_lease(rig: Rig) -> None:
    """A result that streams in for longer than the lease (a large model on a slow link)
    renews the lease as it goes: no other worker may take the job and run it again."""
    job_id = rig.submit()
    held: list[bool] = []
    _slow_download(rig, 5.0, lambda _i: held.append(
        rig.job(job_id).server.lease_expires_at > rig.clock.now()))  # type: ignore[operator]
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert len(held) * 5.0 > 3 * rig.services.policy.lease_seconds  # (the rig's lease: 30 s)
    assert all(held), f"the lease ran out after {held.index(False) * 5.0:.0f} s of upload"


def test_a_lease_lost_during_the_upload_stores_nothing(rig: Rig) -> None:
    """A worker that loses its lease while its result streams in stops there: it leaves
    no object for the worker now holding the job to find overwritten."""
    job_id = rig.submit()

    def steal(i: int) -> None:
        if i == 2:
            rig.store.apply(job_id, Change({}, {"leaseOwner": "someone-else"}))

    _slow_download(rig, 5.0, steal)
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    assert rig.blobs.objects == {}
    assert rig.job(job_id).status is JobStatus.PROCESSING and rig.job(job_id).result is None


def test_a_store_blip_during_the_upload_does_not_stop_it(rig: Rig) -> None:
    """The upload's lease checks are best effort: a job store unreachable for a moment
    (its reads and heartbeats fail) leaves the upload running; the completion's own write
    still decides whether the job is this delivery's."""
    job_id = rig.submit()

    def blip(i: int) -> None:
        rig.store.unavailable = i in (2, 3)

    _slow_download(rig, 5.0, blip)
    assert run_job(job_id, rig.services) is RunOutcome.COMPLETED
    assert rig.job(job_id).status is JobStatus.COMPLETED


def test_a_delivery_past_its_lease_cannot_end_the_next_one_in_its_process(rig: Rig) -> None:
    """One worker process runs several deliveries at once. Delivery A outlives its lease
    and delivery B of the same job, in the same process, claims it; A's ending (a
    retryable error here) must not release or fail the job under B, which completes."""
    claimed, finish = threading.Event(), threading.Event()
    outcomes: list[RunOutcome] = []
    second = threading.Thread(target=lambda: outcomes.append(run_job(job_id, rig.services)))

    class TwoDeliveries(SyncFake):
        def generate(self, request, on_progress, should_stop):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 1:  # A: stalls past its lease; B claims meanwhile
                rig.clock.advance(rig.services.policy.lease_seconds + 1)
                second.start()
                assert claimed.wait(10)
                raise RetryableError("The provider is busy.", code="provider_busy")
            claimed.set()
            assert finish.wait(10)
            return real_artifact(request.kind, rig.clock)

    rig.providers["image"] = TwoDeliveries(rig.clock)
    job_id = rig.submit()
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    job = rig.job(job_id)
    assert (job.status, job.error, job.attempts) == (JobStatus.PROCESSING, None, 2)
    finish.set()
    second.join(10)
    assert outcomes == [RunOutcome.COMPLETED]
    assert rig.job(job_id).status is JobStatus.COMPLETED


def test_an_artifact_over_the_limit_fails_without_storing() -> None:
    rig = build_rig(max_artifact_bytes=100)
    job_id = rig.submit()
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    assert rig.job(job_id).error["code"] in ("artifact_too_large", "invalid_artifact")  # type: ignore[index]
    assert rig.blobs.objects == {}


def test_expired_and_exhausted_claims_fail_and_notify(rig: Rig) -> None:
    rig.devices.register("alice", "phone", fid="f")
    job_id = rig.submit()
    rig.clock.advance(3601)
    assert run_job(job_id, rig.services) is RunOutcome.EXPIRED
    assert rig.job(job_id).error["code"] == "deadline_exceeded"  # type: ignore[index]
    other = rig.submit(prompt="another")
    rig.store.apply(other, Change({"attempts": 3}))
    assert run_job(other, rig.services) is RunOutcome.EXHAUSTED
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"] * 2


def test_a_busy_job_is_left_to_its_holder(rig: Rig) -> None:
    job_id = rig.submit()
    rig.store.transact(job_id, lambda job: (lifecycle.claim(
        job, worker_id="other", now=rig.clock.now(), policy=rig.services.policy,
        claim_token="x").change, None))
    assert run_job(job_id, rig.services) is RunOutcome.BUSY


def test_a_failing_store_at_the_end_releases_for_retry(rig: Rig) -> None:
    """A completion that cannot be written is retried like a crash (never half-done)."""
    job_id = rig.submit()
    rig.blobs.fail_next = 1
    with pytest.raises(RetryableError) as caught:
        run_job(job_id, rig.services)
    assert caught.value.code == "storage_unavailable"
    assert rig.job(job_id).status is JobStatus.PENDING


@pytest.mark.parametrize("error", [PermanentError("Refused.", code="content_refused"),
                                   RetryableError("Busy.", code="provider_busy")])
def test_an_ending_after_the_lease_was_lost_writes_nothing(rig: Rig, error: Exception) -> None:
    """A worker whose lease another worker took may not fail or release the job."""
    provider = SyncFake(rig.clock, error=error)
    rig.providers["image"] = provider
    job_id = rig.submit()
    original = provider.generate

    def stolen(request, on_progress, should_stop):  # type: ignore[no-untyped-def]
        try:
            return original(request, on_progress, should_stop)
        finally:
            rig.store.apply(job_id, Change({}, {"leaseOwner": "someone-else"}))

    provider.generate = stolen  # type: ignore[method-assign]
    assert run_job(job_id, rig.services) is RunOutcome.LEASE_LOST
    assert rig.job(job_id).status is JobStatus.PROCESSING and rig.job(job_id).error is None


def test_every_delivery_says_what_it_did(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """One structured line per delivery: its outcome (a nack in backoff is not_yet)."""
    rig.providers["image"] = SyncFake(rig.clock, error=RetryableError("Busy.", code="busy"))
    job_id = rig.submit()
    caplog.set_level("INFO", logger="kiln.worker")
    for _ in range(2):
        with pytest.raises(RetryableError):
            handle_message(message(job_id), rig.services)
    outcomes = [getattr(r, "fields", {}).get("outcome") for r in caplog.records
                if r.getMessage() == "delivery done"]
    assert outcomes == ["released", "not_yet"]


def test_a_cancel_while_the_result_uploads_leaves_no_file(rig: Rig) -> None:
    """Given a job canceled while its result streams into the bucket (faster than the
    upload's own cancel checks), then the job ends canceled and its result and thumbnail
    are deleted: no job names them, and the owner could still read them."""
    job_id = rig.submit(kind="image")
    provider = rig.providers["image"]
    generate = provider.generate

    def canceled_midway(request: Any, on_progress: Any, should_stop: Any) -> Any:
        made = generate(request, on_progress, should_stop)
        data = b"".join(made.chunks)

        def chunks() -> Any:
            yield data[:100]
            rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
            yield data[100:]

        return dataclasses.replace(made, chunks=chunks(), size=None)

    provider.generate = canceled_midway
    assert run_job(job_id, rig.services) is RunOutcome.CANCELED
    assert rig.job(job_id).result is None
    assert rig.blobs.list(f"generations/alice/{job_id}/") == []
