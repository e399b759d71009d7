"""``POST /v1/jobs`` bodies at the edges: an ``Idempotency-Key`` reused with another
``webhook`` (a different request: 422, as the contract says), and numbers too large to
read (a 400 that says so, not "not valid JSON")."""

from __future__ import annotations

import pytest
from httpkit import Rig, api_key, call

from kiln.core.requests import parse_job_request

CUBE = {"kind": "image", "prompt": "a red cube"}


def test_a_key_reused_with_another_webhook_is_422(rig: Rig) -> None:
    """Given a job submitted with key k1 and webhook A, when the same key comes with webhook
    B (or none), then 422 idempotency_key_reused and the job keeps A; the same body again is
    a replay."""
    auth, key = api_key(rig), {"Idempotency-Key": "k1"}
    first = {**CUBE, "webhook": "https://93.184.215.14/a"}
    status, answer, _ = call(rig, auth, "POST", "/v1/jobs", first, headers=key)
    assert status == 202
    job_id = answer["jobId"]
    for other in ({**CUBE, "webhook": "https://93.184.215.14/b"}, CUBE):
        status, answer, _ = call(rig, auth, "POST", "/v1/jobs", other, headers=key)
        assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")
    status, answer, headers = call(rig, auth, "POST", "/v1/jobs", first, headers=key)
    assert (status, answer["jobId"], headers.get("Idempotent-Replayed")) == (202, job_id, "true")
    assert [job.server.webhook for job in rig.store.find()] == ["https://93.184.215.14/a"]


def test_a_request_without_a_webhook_keeps_its_fingerprint(rig: Rig) -> None:
    """Given a job without a webhook, its stored fingerprint is the one computed before the
    webhook was part of it (so jobs stored then still replay), and a later request with
    the same key and a webhook is 422."""
    auth, key = api_key(rig), {"Idempotency-Key": "k2"}
    status, answer, _ = call(rig, auth, "POST", "/v1/jobs", CUBE, headers=key)
    assert status == 202
    # The fingerprint of this request before webhooks counted (the formula of 2026-12).
    assert rig.job(answer["jobId"]).server.fingerprint == "022ebf056d7a15a87163abde7d9e13dd"
    assert parse_job_request(dict(CUBE)).fingerprint() == "022ebf056d7a15a87163abde7d9e13dd"
    status, answer, _ = call(rig, auth, "POST", "/v1/jobs",
                             {**CUBE, "webhook": "https://93.184.215.14/a"}, headers=key)
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")


def test_a_job_stored_before_webhooks_were_fingerprinted_still_replays(rig: Rig) -> None:
    """Given a job with a webhook stored with the earlier fingerprint (without its URL),
    when the client retries with the same key, body and webhook, then it is a replay;
    with another webhook, 422."""
    auth, key = api_key(rig), {"Idempotency-Key": "k3"}
    first = {**CUBE, "webhook": "https://93.184.215.14/a"}
    status, answer, _ = call(rig, auth, "POST", "/v1/jobs", first, headers=key)
    assert status == 202
    job_id = answer["jobId"]
    legacy = parse_job_request(dict(CUBE)).fingerprint()
    rig.store.servers[job_id]["fingerprint"] = legacy  # as stored before this change
    status, answer, headers = call(rig, auth, "POST", "/v1/jobs", first, headers=key)
    assert (status, answer["jobId"], headers.get("Idempotent-Replayed")) == (202, job_id, "true")
    other = {**CUBE, "webhook": "https://93.184.215.14/b"}
    status, answer, _ = call(rig, auth, "POST", "/v1/jobs", other, headers=key)
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused")


@pytest.mark.parametrize(("number", "said"), [
    (b"1" * 4301, "an integer of 4301 digits"),
    (b"-" + b"9" * 5000, "an integer of 5000 digits"),
    (b"1e999", "1e999 is beyond a 64-bit float"),
    (b"-1.5e400", "-1.5e400 is beyond a 64-bit float"),
])
def test_a_number_too_large_to_read_is_a_400_that_says_so(rig: Rig, number: bytes, said: str) -> None:
    body = b'{"kind": "image", "prompt": "x", "options": {"seed": ' + number + b"}}"
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", raw=body)
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    assert answer["error"]["message"] == f"A number in the body is too large: {said}."
    assert rig.store.docs == {}


def test_the_largest_readable_integer_is_refused_by_its_field_not_the_parser(rig: Rig) -> None:
    """4300 digits are read (Python's limit), so the field's own rule answers."""
    body = b'{"kind": "image", "prompt": "x", "options": {"seed": ' + b"1" * 4300 + b"}}"
    status, answer, _ = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", raw=body)
    assert (status, answer["error"]["code"]) == (400, "invalid_options")
