"""Webhook URLs an HTTP client cannot send to, at ``POST /v1/webhooks`` and as a job's own
``webhook``: control characters, whitespace, lone surrogates and hosts that are not valid
international names are a 400 ``invalid_webhook_url`` and nothing is stored (stored, they
made every delivery raise, and a surrogate made the Firestore write a 500). Also the
``events`` of a registration: a list, or absent."""

from __future__ import annotations

from typing import Any

import pytest
from httpkit import Rig, api_key, call

CUBE = {"kind": "image", "prompt": "a red cube"}
UNSENDABLE = {
    "NUL": "https://8.8.8.8/\u0000x",
    "DEL": "https://8.8.8.8/\u007f",
    "C1 control": "https://8.8.8.8/\u0085",
    "CR LF": "https://8.8.8.8/a\r\nX-Injected: 1",
    "line feed at the end": "https://8.8.8.8/a\n",
    "tab in the host": "https://8.8.\t8.8/",
    "space": "https://8.8.8.8/a b",
    "no-break space": "https://8.8.8.8/a\u00a0b",
    "line separator": "https://8.8.8.8/\u2028",
    "zero-width space in the host": "https://a\u200b.example/",
    "lone surrogate": "https://8.8.8.8/\ud800",
    "surrogate in the host": "https://a\udfff.example/",
    "not a valid IDNA label": "https://xn--zz.example/",
    "a character IDNA refuses": "https://\u2488.example/",
}


@pytest.mark.parametrize("url", list(UNSENDABLE.values()), ids=list(UNSENDABLE))
def test_an_unsendable_url_is_not_registered(rig: Rig, url: str) -> None:
    """Given such a URL, when a backend registers it, then 400 invalid_webhook_url saying
    it was refused, and no endpoint."""
    status, answer, _ = call(rig, api_key(rig), "POST", "/v1/webhooks", {"url": url})
    assert (status, answer["error"]["code"]) == (400, "invalid_webhook_url")
    assert answer["error"]["message"].startswith("The webhook URL was refused: it ")
    assert rig.services.webhooks.endpoints("acme") == []


@pytest.mark.parametrize("url", list(UNSENDABLE.values()), ids=list(UNSENDABLE))
def test_an_unsendable_url_is_not_a_jobs_webhook(rig: Rig, url: str) -> None:
    """Given such a URL as a job's ``webhook`` (the tenant allows them), when the job is
    submitted, then 400 invalid_webhook_url and no job."""
    status, answer, _ = call(rig, api_key(rig), "POST", "/v1/jobs", {**CUBE, "webhook": url})
    assert (status, answer["error"]["code"]) == (400, "invalid_webhook_url")
    assert rig.store.docs == {}


@pytest.mark.parametrize("url", ["https://b\u00fccher.example/hook", "https://93.184.215.14/a%20b?x=%0A",
                                 "https://hooks.example/\u00e9t\u00e9/\U0001f525"])
def test_printable_international_urls_are_still_a_jobs_webhook(rig: Rig, url: str) -> None:
    """The new rule refuses only what cannot be sent: an international name, escapes and
    non-ASCII path characters are accepted (checked without a lookup at submit)."""
    status, answer, _ = call(rig, api_key(rig), "POST", "/v1/jobs", {**CUBE, "webhook": url})
    assert status == 202, answer
    assert rig.job(answer["jobId"]).server.webhook == url


@pytest.mark.parametrize("events", [{}, False, True, 0, "job.completed", {"job.completed": 1}])
def test_events_that_are_not_a_list_are_refused(rig: Rig, events: Any) -> None:
    """``events`` must be a list: ``{}`` or ``false`` is not "every event" (it was, read as
    falsy), and nothing is registered."""
    status, answer, _ = call(rig, api_key(rig), "POST", "/v1/webhooks",
                             {"url": "https://93.184.215.14/h", "events": events})
    assert (status, answer["error"]["code"]) == (400, "invalid_events")
    assert rig.services.webhooks.endpoints("acme") == []


@pytest.mark.parametrize("body", [{}, {"events": None}, {"events": []}])
def test_events_absent_null_or_empty_mean_every_type(rig: Rig, body: dict[str, Any]) -> None:
    status, answer, _ = call(rig, api_key(rig), "POST", "/v1/webhooks",
                             {"url": "https://93.184.215.14/h", **body})
    assert (status, answer["events"]) == (201, [])
