"""The HTTP edge reads exactly one strict JSON document: the media type, the charset,
the length, the bytes and the keys are checked before a request costs anything."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from rig import build_rig

from kiln.http.api import handle

GOOD = b'{"kind": "image", "prompt": "a red cube"}'


def call(method: str, path: str, body: bytes = b"", environ: dict[str, str] | None = None,
         **headers: str) -> tuple[int, dict[str, Any]]:
    rig = build_rig()
    headers = {"Authorization": "Bearer uid:alice", **headers}
    with flask.Flask(__name__).test_request_context(path, method=method, data=body,
                                                    headers=headers,
                                                    environ_overrides=environ or {}):
        response = handle(flask.request, rig.services)
    assert rig.store.find(uid="alice") == [] or response.status_code < 300
    return response.status_code, response.get_json()


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx",
    "application/json; charset=latin-1", "application/json; charset=utf-16",
])
def test_a_body_that_is_not_declared_utf8_json_is_415(content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, body = call("POST", "/v1/jobs", GOOD, **headers)
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8",
                                          "Application/JSON;charset=\"utf-8\""])
def test_utf8_json_in_any_spelling_is_taken(content_type: str) -> None:
    assert call("POST", "/v1/jobs", GOOD, **{"Content-Type": content_type})[0] == 202


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"kind": "image", "prompt": "a", "prompt": "b"}', "duplicate_key"),
    (b'{"kind": "image", "prompt": "a", "options": {"style": "x", "style": "y"}}', "duplicate_key"),
    ('{"kind": "image", "prompt": "café"}'.encode("latin-1"), "invalid_json"),
    ('{"kind": "image", "prompt": "cube"}'.encode("utf-16"), "invalid_json"),
])
def test_duplicate_keys_and_bytes_that_are_not_utf8_are_400(raw: bytes, code: str) -> None:
    status, body = call("POST", "/v1/jobs", raw, **{"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, code)
    assert body["error"]["message"]


def test_a_body_shorter_than_its_content_length_creates_nothing() -> None:
    # As a client that stopped sending (or a proxy that cut it) leaves it to the server.
    status, body = call("POST", "/v1/jobs", GOOD, {"CONTENT_LENGTH": str(len(GOOD) + 10)},
                        **{"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, "incomplete_body")


@pytest.mark.parametrize("limit", ["0", "-5", "101", "1e30", "2.5", "", "٣"])
def test_an_out_of_range_limit_is_400_not_clamped(limit: str) -> None:
    status, body = call("GET", f"/v1/jobs?limit={limit}")
    assert (status, body["error"]["code"]) == (400, "invalid_limit")


@pytest.mark.parametrize("limit", ["1", "100"])
def test_a_limit_in_range_lists(limit: str) -> None:
    assert call("GET", f"/v1/jobs?limit={limit}") == (200, {"jobs": []})


@pytest.mark.parametrize("seed", [b"30920248.0", b"30920248", b"3.0920248e7"])
def test_an_integral_float_option_is_stored_as_an_integer(seed: bytes) -> None:
    # JSON Schema's integer: 30920248.0 is 30920248, kept as an int (not 30920248.0).
    rig = build_rig()
    body = b'{"kind": "image", "prompt": "a red cube", "options": {"seed": ' + seed + b"}}"
    with flask.Flask(__name__).test_request_context(
            "/v1/jobs", method="POST", data=body,
            headers={"Authorization": "Bearer uid:alice", "Content-Type": "application/json"}):
        assert handle(flask.request, rig.services).status_code == 202
    [job] = rig.store.find(uid="alice")
    assert job.options == {"seed": 30920248} and type(job.options["seed"]) is int


def test_the_list_is_the_callers_newest_first_and_limited() -> None:
    # A user with more jobs than one page (the old code read 500, unordered, and sorted).
    rig = build_rig()
    ids = []
    for n in range(30):
        ids.append(rig.submit(prompt=f"cube {n}"))
        rig.clock.advance(1.0)
    rig.submit(uid="bob")
    with flask.Flask(__name__).test_request_context(
            "/v1/jobs?limit=25", headers={"Authorization": "Bearer uid:alice"}):
        response = handle(flask.request, rig.services)
    assert [j["jobId"] for j in response.get_json()["jobs"]] == ids[::-1][:25]


def test_the_list_pages_through_every_job_once_ties_included() -> None:
    """Given 23 jobs, some created at the same instant (a batch's are), when the list is
    read 5 at a time through nextPageToken, then every job comes once, newest first (then
    by id), and the last page has no token."""
    rig = build_rig()
    for n in range(23):
        rig.submit(prompt=f"cube {n}")
        if n % 3 == 2:
            rig.clock.advance(1.0)
    rig.submit(uid="bob")
    pages, token = [], ""
    while True:
        query = "/v1/jobs?limit=5" + (f"&pageToken={token}" if token else "")
        with flask.Flask(__name__).test_request_context(
                query, headers={"Authorization": "Bearer uid:alice"}):
            answer = handle(flask.request, rig.services).get_json()
        pages.append([job["jobId"] for job in answer["jobs"]])
        token = answer.get("nextPageToken", "")
        if not token:
            break
    listed = [job_id for page in pages for job_id in page]
    newest_first = sorted(rig.store.find(uid="alice"), key=lambda j: (j.created_at, j.id),
                          reverse=True)
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert listed == [job.id for job in newest_first]


@pytest.mark.parametrize("token", [
    "x", "%21%21", "YXxi",  # "a|b"
    "MjAyNi0wMS0wMVQwMDowMDowMHxhYmNkZWZnaGlq",  # a time without its zone
    "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxfX3h4X18",  # an id Firestore reserves
    "MDAwMS0wMS0wMVQwMDowMDowMCswMTowMHxhYmNkZWZnaGlq",  # year 0 in UTC
    "OTk5OS0xMi0zMVQyMzo1OTo1OS0wMTowMHxhYmNkZWZnaGlq",  # year 10000 in UTC
])
def test_a_page_token_the_api_did_not_give_is_400(token: str) -> None:
    status, body = call("GET", f"/v1/jobs?limit=5&pageToken={token}")
    assert (status, body["error"]["code"]) == (400, "invalid_page_token")


def test_retry_answers_as_the_contract_says_for_every_status() -> None:
    """failed → 202 pending (published); pending again → 202, nothing published; completed
    or canceled → 409 invalid_transition (docs/client-contract.md, docs/openapi.yaml)."""
    from kiln.core import lifecycle
    from kiln.runtime import actions

    rig = build_rig()

    def retry(job_id: str) -> tuple[int, dict[str, Any]]:
        with flask.Flask(__name__).test_request_context(
                f"/v1/jobs/{job_id}:retry", method="POST",
                headers={"Authorization": "Bearer uid:alice"}):
            response = handle(flask.request, rig.services)
        return response.status_code, response.get_json()

    failed = rig.submit()
    rig.store.transact(failed, lambda job: (lifecycle.fail(job, code="c", message="m"), None))
    published = len(rig.queue.published)
    assert retry(failed) == (202, {"jobId": failed, "status": "pending"})
    assert retry(failed) == (202, {"jobId": failed, "status": "pending"})
    assert len(rig.queue.published) == published + 1
    completed = rig.submit(prompt="done")
    rig.drive(completed)
    canceled = rig.submit(prompt="stop")
    actions.cancel(rig.services, canceled, by="owner")
    for job_id in (completed, canceled):
        status, body = retry(job_id)
        assert (status, body["error"]["code"]) == (409, "invalid_transition")
