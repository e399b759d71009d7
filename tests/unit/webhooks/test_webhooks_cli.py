"""``kiln webhooks …`` (issue 13, item 2): add prints the secret once and alone; list
never shows it; deliveries and replay let an operator see and resend an event."""

from __future__ import annotations

import pytest
from hookkit import Kit, finished_job

from kiln.webhooks import delivery
from kiln_dev.cli import main
from kiln_dev.standins.webhook_receiver import Behavior, WebhookReceiver


def run(kit: Kit, *argv: str) -> int:
    return main(["webhooks", *argv], services=lambda: kit.services)


def test_add_list_deliveries_replay_remove(kit: Kit, receiver: WebhookReceiver,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = receiver.behave("/ops", Behavior())
    assert run(kit, "add", "--tenant", "acme", url, "--events", "job.completed") == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    [endpoint] = kit.hooks.endpoints("acme")
    assert secret.startswith("whsec_") and endpoint.secret == secret
    assert run(kit, "list") == 0
    listing = capsys.readouterr().out
    assert endpoint.id in listing and secret not in listing
    job = kit.services.channels["api"]
    event_id = job.on_finished(kit.services, finished_job())["webhookEvent"]
    for delivery_id, number in kit.pending_wakes():
        delivery.attempt(kit.services, delivery_id, number)
    assert run(kit, "deliveries", "--event", event_id, "--attempts") == 0
    shown = capsys.readouterr().out
    assert "succeeded" in shown and "status=200" in shown
    assert run(kit, "replay", event_id) == 0
    assert "to 1 deliveries" in capsys.readouterr().out
    for delivery_id, number in kit.pending_wakes():
        delivery.attempt(kit.services, delivery_id, number)
    assert [r.webhook_id for r in receiver.at("/ops")] == [event_id, event_id]
    assert run(kit, "remove", endpoint.id) == 0 and kit.hooks.endpoints() == []
    assert run(kit, "remove", endpoint.id) == 1
    assert run(kit, "replay", "msg_unknown") == 1


def test_add_refuses_a_private_url(kit: Kit, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(kit, "add", "--tenant", "acme", "https://10.1.1.1/h") == 2
    assert "refused" in capsys.readouterr().err and kit.hooks.endpoints() == []
