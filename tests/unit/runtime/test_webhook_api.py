"""``/v1/webhooks…`` and a job's own ``webhook`` URL through the in-process HTTP API
(issue 13, items 2 and 5): endpoints per tenant with a secret shown once, and every
private, loopback or metadata URL refused with 400 before anything is stored."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from rig import Rig, api_call

from kiln.core.errors import RetryableError, ValidationError
from kiln.core.keys import Tenant
from kiln.http.api import handle
from kiln.providers.fetch import HostNotFound
from kiln.runtime.keys import create_key
from kiln.webhooks import endpoints

CUBE = {"kind": "image", "prompt": "a red cube"}
REFUSED = ["https://10.0.0.8/hook", "https://127.0.0.1/hook", "https://169.254.169.254/x",
           "https://metadata.google.internal/x", "https://[::1]/h", "http://example.com/h",
           "https://192.168.0.1/h", "not a url"]


def call(rig: Rig, authorization: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    with flask.Flask(__name__).test_request_context(path, method=method, json=body,
                                                    headers={"Authorization": authorization}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json()


def key(rig: Rig, tenant: str = "acme", *, allow_job_webhooks: bool = False) -> str:
    created = create_key(rig.services.keys, rig.clock, tenant=tenant,
                         scopes=["submit", "read", "cancel"])
    if allow_job_webhooks:
        rig.services.keys.put_tenant(Tenant(tenant, None, True))
    return f"Bearer {created.secret}"


def test_endpoints_are_added_listed_and_removed_per_tenant(rig: Rig) -> None:
    """Given a key, when it registers an endpoint, then the answer carries a whsec_ secret
    once; the list never shows it; another tenant neither sees nor removes it."""
    auth = key(rig)
    status, created = call(rig, auth, "POST", "/v1/webhooks",
                           {"url": "https://93.184.215.14/hook", "events": ["job.completed"]})
    assert status == 201 and created["secret"].startswith("whsec_")
    assert created["events"] == ["job.completed"]
    status, listed = call(rig, auth, "GET", "/v1/webhooks")
    assert status == 200 and [e["id"] for e in listed["endpoints"]] == [created["id"]]
    assert "secret" not in listed["endpoints"][0]
    other = key(rig, "globex")
    assert call(rig, other, "GET", "/v1/webhooks")[1] == {"endpoints": []}
    assert call(rig, other, "DELETE", f"/v1/webhooks/{created['id']}")[0] == 404
    assert call(rig, auth, "DELETE", f"/v1/webhooks/{created['id']}") == (
        200, {"id": created["id"], "deleted": True})
    assert call(rig, auth, "GET", "/v1/webhooks")[1] == {"endpoints": []}


@pytest.mark.parametrize("url", REFUSED)
def test_a_private_loopback_or_metadata_endpoint_is_a_400(rig: Rig, url: str) -> None:
    """Given a webhook URL to private, loopback or metadata space, when it is registered,
    then the answer is 400 invalid_webhook_url with a readable message and nothing is
    stored."""
    status, answer = call(rig, key(rig), "POST", "/v1/webhooks", {"url": url})
    assert status == 400 and answer["error"]["code"] == "invalid_webhook_url"
    assert "refused" in answer["error"]["message"] or "https" in answer["error"]["message"]
    assert rig.services.webhooks.endpoints("acme") == []


def test_a_name_resolving_to_private_space_is_refused(rig: Rig) -> None:
    """Given a host name that resolves to a private address, when it is registered, then
    it is refused (the registration resolves the name, as every fetch does), and a name
    that does not exist is refused too."""
    with pytest.raises(ValidationError) as info:
        endpoints.register(rig.services, "acme", "https://hooks.example/x",
                           resolve=lambda _h, _p: ["10.9.8.7"])
    assert info.value.code == "invalid_webhook_url" and "private" in info.value.message
    def no_such_host(_h: str, _p: int) -> list[str]:
        raise HostNotFound("no such host", code="fetch_unavailable")

    with pytest.raises(ValidationError):
        endpoints.register(rig.services, "acme", "https://no-such-host.example/x",
                           resolve=no_such_host)

    def dns_fails_for_now(_h: str, _p: int) -> list[str]:  # EAI_AGAIN, which anyone can arrange
        raise RetryableError("temporary failure in name resolution", code="fetch_unavailable")

    with pytest.raises(ValidationError) as later:  # the caller's to fix: 400, not a 503
        endpoints.register(rig.services, "acme", "https://flaky-dns.example/x",
                           resolve=dns_fails_for_now)
    assert later.value.code == "invalid_webhook_url" and "resolved" in later.value.message
    assert rig.services.webhooks.endpoints("acme") == []


def test_bad_event_types_and_app_users_are_refused(rig: Rig) -> None:
    status, answer = call(rig, key(rig), "POST", "/v1/webhooks",
                          {"url": "https://93.184.215.14/h", "events": ["job.exploded"]})
    assert (status, answer["error"]["code"]) == (400, "invalid_events")
    status, answer = call(rig, "Bearer uid:alice", "GET", "/v1/webhooks")
    assert (status, answer["error"]["code"]) == (403, "api_key_required")


def test_a_job_webhook_needs_the_tenants_permission(rig: Rig) -> None:
    """Given a tenant without allowJobWebhooks, when a job names a webhook, then 403 and no
    job; given one with it, the job is accepted and records its URL; a private URL is 400."""
    body = {**CUBE, "webhook": "https://93.184.215.14/job-done"}
    status, answer = call(rig, key(rig), "POST", "/v1/jobs", body)
    assert (status, answer["error"]["code"]) == (403, "job_webhooks_not_allowed")
    assert rig.services.store.find() == []
    allowed = key(rig, "initech", allow_job_webhooks=True)
    status, answer = call(rig, allowed, "POST", "/v1/jobs", body)
    assert status == 202
    assert rig.job(answer["jobId"]).server.webhook == "https://93.184.215.14/job-done"
    status, answer = call(rig, allowed, "POST", "/v1/jobs",
                          {**CUBE, "webhook": "https://169.254.169.254/latest/meta-data"})
    assert (status, answer["error"]["code"]) == (400, "invalid_webhook_url")
    status, answer = call(rig, "Bearer uid:alice", "POST", "/v1/jobs", body)
    assert (status, answer["error"]["code"]) == (403, "job_webhooks_not_allowed")


def test_a_replay_is_answered_as_the_first_time_after_the_settings_changed(rig: Rig) -> None:
    """Given a keyed job with a webhook, when the tenant turns per-job webhooks off, then
    the same request again is its replay (202, the same job, nothing new), not a 403;
    another body under that key is still 422."""
    auth = key(rig, "initech", allow_job_webhooks=True)
    body = {**CUBE, "webhook": "https://93.184.215.14/job-done"}
    first = api_call(rig, auth, "POST", "/v1/jobs", body, key="order-9")
    assert first[0] == 202
    rig.services.keys.put_tenant(Tenant("initech", None, False))
    again = api_call(rig, auth, "POST", "/v1/jobs", body, key="order-9")
    assert again[:2] == first[:2] and again[2].get("Idempotent-Replayed") == "true"
    assert len(rig.services.store.find()) == 1
    other = api_call(rig, auth, "POST", "/v1/jobs", {**body, "webhook": "https://93.184.215.14/x"},
                     key="order-9")
    assert (other[0], other[1]["error"]["code"]) == (422, "idempotency_key_reused")
    status, answer, _ = api_call(rig, auth, "POST", "/v1/jobs", body, key="order-10")
    assert (status, answer["error"]["code"]) == (403, "job_webhooks_not_allowed")
    status, answer, _ = api_call(rig, auth, "POST", "/v1/jobs", {**body, "webhook": 123},
                                 key="order-9")  # as a first request with it would be
    assert (status, answer["error"]["code"]) == (400, "invalid_webhook_url")


def test_the_job_webhook_secret_is_stable(rig: Rig) -> None:
    auth = key(rig)
    first = call(rig, auth, "GET", "/v1/webhooks/secret")[1]["secret"]
    assert first.startswith("whsec_") and call(rig, auth, "GET", "/v1/webhooks/secret")[1] == {
        "secret": first}


def test_a_read_only_key_cannot_fetch_the_signing_secret(rig: Rig) -> None:
    """The per-job webhook secret signs the tenant's deliveries: a key that may only read
    (a dashboard's) would forge them with it. 403, as for registering an endpoint."""
    reader = create_key(rig.services.keys, rig.clock, tenant="acme", scopes=["read"])
    status, answer = call(rig, f"Bearer {reader.secret}", "GET", "/v1/webhooks/secret")
    assert status == 403 and "secret" not in answer
