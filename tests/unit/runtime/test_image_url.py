"""``options.imageUrl`` is checked at submit with the fetcher's own rules, and a host
that does not exist fails the job once, readably (issue 15, item 10)."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from rig import build_rig

from kiln.core.errors import PermanentError, RetryableError
from kiln.core.job import JobStatus
from kiln.core.requests import parse_job_request
from kiln.http.api import handle
from kiln.providers.fetch import FetchPolicy, HostNotFound, check_url
from kiln.providers.taskserver import TaskServerProvider
from kiln.runtime.accept import accept_job


def submit(url: str, rig: Any = None) -> tuple[int, dict[str, Any]]:
    rig = rig or build_rig()
    body = {"kind": "model", "prompt": "from a picture", "options": {"imageUrl": url}}
    with flask.Flask(__name__).test_request_context(
            "/v1/jobs", method="POST", json=body, headers={"Authorization": "Bearer uid:alice"}):
        response = handle(flask.request, rig.services)
    if response.status_code != 202:
        assert rig.store.find(uid="alice") == []
    return response.status_code, response.get_json()


@pytest.mark.parametrize(("url", "why"), [
    ("http://img.example.org/cat.png", "not HTTPS"),
    ("https://user:secret@img.example.org/cat.png", "user name or password"),
    ("https://127.0.0.1/cat.png", "loopback"),
    ("https://[::1]/cat.png", "loopback"),
    ("https://2130706433/cat.png", "loopback"),
    ("https://0x7f.0.0.1/cat.png", "loopback"),
    ("https://169.254.169.254/computeMetadata/v1/", "link-local"),
    ("https://[fe80::1]/cat.png", "link-local"),
    ("https://10.1.2.3/cat.png", "private"),
    ("https://192.168.0.10/cat.png", "private"),
    ("https://[::ffff:172.16.0.1]/cat.png", "private"),
    ("https://100.64.0.1/cat.png", "non-public"),
    ("https://0.0.0.0/cat.png", "unspecified"),
    ("https://metadata.google.internal/computeMetadata/v1/", "internal"),
    ("https://localhost/cat.png", "internal"),
    ("https://img.example.org:99999/cat.png", "not a valid URL"),
])
def test_an_image_url_the_fetcher_would_refuse_is_400_at_submit(url: str, why: str) -> None:
    status, body = submit(url)
    assert (status, body["error"]["code"]) == (400, "invalid_image_url")
    assert body["error"]["message"].startswith("Option 'imageUrl' was refused: ")
    assert why in body["error"]["message"]


def test_a_scheme_other_than_http_is_refused_by_the_request_model() -> None:
    status, body = submit("ftp://img.example.org/cat.png")
    assert (status, body["error"]["code"]) == (400, "invalid_options")


def test_a_public_https_image_url_is_accepted() -> None:
    assert submit("https://img.example.org/cat.png")[0] == 202


def test_local_mode_takes_http_to_loopback_as_the_fetcher_does() -> None:
    assert submit("http://127.0.0.1:8080/cat.png", build_rig(env="local"))[0] == 202


def no_such_host(host: str, port: int) -> list[str]:
    raise HostNotFound("The result's host could not be resolved.", code="fetch_unavailable")


def test_an_unresolvable_image_host_fails_the_job_once_readably() -> None:
    # given a model job whose image host does not exist (DNS: no such name)
    rig = build_rig(taskserver_url="https://tasks.example.org", factories={
        "model": lambda s: TaskServerProvider(s, resolve=no_such_host)})
    job_id = accept_job(rig.services, uid="alice", channel="app", request=parse_job_request(
        {"kind": "model", "prompt": "x", "options": {"imageUrl": "https://nope.example/c.png"}})
    ).job_id
    # when it runs
    rig.drive(job_id)
    # then it failed on its first attempt, not retried, with a message a user can read
    job = rig.job(job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 1
    assert job.error is not None and job.error["code"] == "invalid_image_url"
    assert job.error["message"] == ("The image link was refused: its host nope.example does "
                                    "not exist.")


def test_a_providers_own_host_that_does_not_resolve_is_still_retried() -> None:
    with pytest.raises(RetryableError):
        check_url("https://assets.example.org/a.glb", FetchPolicy(hosts=("assets.example.org",)),
                  no_such_host)
    with pytest.raises(PermanentError):
        check_url("https://assets.example.org/a.glb",
                  FetchPolicy(hosts=None, unknown_host_final=True), no_such_host)
