"""A delivery to a URL the HTTP client cannot send to (stored before the rule that now
refuses it at registration and submit) ends failed after one recorded attempt; it never
raises, so it is never retried forever."""

from __future__ import annotations

import pytest
from hookkit import Kit

from kiln.core import urls
from kiln.webhooks import delivery, events, model, send
from kiln.webhooks.delivery import AttemptOutcome
from kiln.webhooks.model import DeliveryState, Endpoint

UNSENDABLE = ["https://8.8.8.8/\u0000x", "https://8.8.8.8/\u007f", "https://8.8.8.8/\ud800",
              "https://8.8.8.8/a\r\nb", "https://xn--zz.example/", "https://\u2488.example/"]


@pytest.mark.parametrize("url", UNSENDABLE)
def test_an_unsendable_url_ends_its_delivery_failed(kit: Kit, url: str) -> None:
    """Given an endpoint stored with such a URL, when its delivery is attempted, then the
    attempt is recorded as refused, the delivery is failed and no retry is scheduled."""
    kit.hooks.put_endpoint(Endpoint(model.new_endpoint_id(), "acme", url, model.new_secret(),
                                    created_at=kit.clock.now()))
    events.emit(kit.services, tenant="acme", event_type="job.completed", subject_id="j", data={})
    outcomes = [delivery.attempt(kit.services, d, n) for d, n in kit.pending_wakes()]
    assert outcomes == [AttemptOutcome.FAILED]
    [record] = kit.hooks.deliveries()
    assert record.state is DeliveryState.FAILED and record.last_error == "refused"
    assert [a["error"] for a in kit.hooks.attempts(record.id)] == ["refused"]
    assert not kit.scheduler.pending


@pytest.mark.parametrize("url", UNSENDABLE)
def test_post_refuses_without_raising_or_resolving(url: str) -> None:
    def no_lookup(_host: str, _port: int) -> list[str]:
        raise AssertionError("an unsendable URL is refused before any lookup")

    result = send.post(url, b"{}", {}, allow_local=False, resolve=no_lookup)
    assert (result.status, result.error) == (None, "refused")
    assert result.detail.startswith("The webhook URL was refused: it ")


@pytest.mark.parametrize(("url", "refused"), [
    ("https://a.example/\u0000", True), ("https://a.example/\u0085", True),
    ("https://a.example/x y", True), ("https://a.example/\u3000", True),
    ("https://a.example/\ud83d", True), ("https://a.example/\u200e", True),
    ("https://b\u00fccher.example/", False), ("https://a.example/%20", False),
    ("https://a.example/\U0001f525", False),
])
def test_the_form_rule_refuses_whitespace_controls_and_surrogates(url: str, refused: bool) -> None:
    why = urls.form_refusal(url, allow_local=False)
    assert bool(why) is refused
    assert not why or why == "it contains whitespace or a character that is not printable"


@pytest.mark.parametrize("url", ["https://93.184.215.14:0/h", "https://hooks.example.com:0/",
                                 "https://[2606:2800::1]:0/"])
def test_port_0_is_refused_by_its_form(url: str) -> None:
    """No server listens on port 0: a webhook or imageUrl naming it is refused when it is
    registered or submitted, not after three days of failed deliveries."""
    assert urls.form_refusal(url, allow_local=False) == "its port is 0, which no server listens on"
    assert urls.form_refusal(url.replace(":0/", ":443/"), allow_local=False) == ""
