"""A retryable provider error's message promises no retry: it is also the message of the
job's final failure ("… Gave up after N attempts."); the job's stage ``retrying`` is what
says a retry is coming."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from rig import build_rig

from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import JobStatus
from kiln.providers.gemini import GeminiImageProvider
from kiln.providers.http import JsonApi, error_for_status
from kiln.runtime.worker import RunOutcome, run_job
from kiln.settings import Settings


def test_the_final_failure_after_503s_does_not_promise_a_retry() -> None:
    rig = build_rig()
    rig.devices.register("alice", "phone", fid="f")

    class Down:
        name = "down"

        def generate(self, *_args: Any) -> Any:
            raise error_for_status(503, "image generation service")

    rig.providers["image"] = Down()
    job_id = rig.submit()
    for attempt in (1, 2):
        with pytest.raises(RetryableError):
            run_job(job_id, rig.services)
        assert rig.job(job_id).stage == "retrying"
        rig.clock.advance(rig.services.policy.backoff(attempt))
    assert run_job(job_id, rig.services) is RunOutcome.FAILED
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["message"] == ("The image generation service is unavailable right now. "
                                    "Gave up after 3 attempts.")
    assert [p.data["type"] for p in rig.push.sent] == ["generation_failed"]
    assert "retry" not in " ".join(p.body for p in rig.push.sent)


def _transport_error(exc: Exception) -> JsonApi:
    def raise_it(_request: httpx.Request) -> httpx.Response:
        raise exc

    return JsonApi("https://api.example", "", "3D generation service",
                   client=httpx.Client(transport=httpx.MockTransport(raise_it)))


def _retryable_errors() -> list[KilnError]:
    found: list[KilnError] = [error_for_status(status, "3D generation service")
                              for status in (408, 429, 500, 502, 503)]
    for exc in (httpx.ReadTimeout("slow"), httpx.ConnectError("refused")):
        with pytest.raises(RetryableError) as raised:
            _transport_error(exc).call("GET", "/task")
        found.append(raised.value)
    gemini = GeminiImageProvider(Settings(project="demo-unit"), client=object())  # type: ignore[arg-type]
    found += [gemini._translate(httpx.ReadTimeout("slow")),  # type: ignore[misc]
              gemini._translate(httpx.ConnectError("refused"))]
    return found


def test_no_retryable_provider_message_promises_a_retry() -> None:
    errors = _retryable_errors()
    assert all(isinstance(error, RetryableError) for error in errors)
    assert [e.message for e in errors if "retry" in e.message] == []
    assert all(e.message.endswith(".") for e in errors)
