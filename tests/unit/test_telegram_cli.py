"""``kiln telegram set-webhook | info | delete-webhook`` against the local Bot API server."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest

from kiln.settings import ENV_VARS
from kiln_dev.cli import main
from kiln_dev.standins.telegram import TelegramServer

URL = "https://kiln.example.com/telegram/webhook"


@pytest.fixture
def server(monkeypatch, tmp_path) -> Iterator[TelegramServer]:
    running = TelegramServer().start()
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KILN_TELEGRAM_BOT_TOKEN", running.token)
    monkeypatch.setenv("KILN_TELEGRAM_API_BASE", running.url)
    monkeypatch.chdir(tmp_path)  # no .kiln/dev.json of a running stack
    yield running
    running.stop()


def test_set_webhook_generates_stores_and_never_prints_the_secret(server, capsys, tmp_path):
    """Given no configured secret, when set-webhook runs, then a secret is generated, set on
    Telegram, written to a file only the operator can read, and shown by 4 characters."""
    assert main(["telegram", "set-webhook", "--url", URL]) == 0
    out = capsys.readouterr().out
    secret_file = tmp_path / ".kiln" / "telegram-webhook-secret"
    secret = secret_file.read_text()
    assert server.webhook["url"] == URL and server.webhook["secret_token"] == secret
    assert server.webhook["allowed_updates"] == ["message", "callback_query", "my_chat_member"]
    assert len(secret) >= 32 and secret not in out and secret[:4] in out
    assert server.token not in out
    assert "gcloud secrets versions add kiln-telegram-webhook-secret" in out
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_set_webhook_uses_the_configured_secret(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_TELEGRAM_WEBHOOK_SECRET", "configured-secret-value")
    assert main(["telegram", "set-webhook", "--url", URL]) == 0
    out = capsys.readouterr().out
    assert server.webhook["secret_token"] == "configured-secret-value"
    assert "configured-secret-value" not in out and "conf…" in out
    assert not (tmp_path / ".kiln").exists()


def test_set_webhook_refuses_plain_http_outside_local(server, capsys):
    assert main(["telegram", "set-webhook", "--url", "http://kiln.example.com/hook"]) == 2
    assert server.webhook["url"] == ""


def test_info_and_delete_webhook(server, capsys):
    main(["telegram", "set-webhook", "--url", URL])
    capsys.readouterr()
    assert main(["telegram", "info"]) == 0
    out = capsys.readouterr().out
    assert "@kiln_local_bot" in out and URL in out and server.token not in out
    assert main(["telegram", "delete-webhook"]) == 0
    assert server.webhook["url"] == ""


def test_a_refused_token_is_reported_without_showing_it(server, capsys, monkeypatch):
    monkeypatch.setenv("KILN_TELEGRAM_BOT_TOKEN", "123456789:wrong-token-value")
    assert main(["telegram", "info"]) == 1
    captured = capsys.readouterr()
    assert "refused the bot token" in captured.err
    assert "wrong-token-value" not in captured.out + captured.err


def test_a_secret_file_that_cannot_be_written_sets_nothing(server, capsys, tmp_path):
    """A --secret-file in a folder that cannot exist: a line and exit 2, and the webhook
    is not set (it would be set with a secret nobody kept)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["telegram", "set-webhook", "--url", URL, "--secret-file", str(blocker / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
    assert server.webhook.get("url") == ""


def test_a_bot_api_address_that_is_no_url_is_a_line_without_the_token(
        server, capsys, monkeypatch):
    monkeypatch.setenv("KILN_TELEGRAM_API_BASE", "http://[::1")
    assert main(["telegram", "info"]) == 1
    err = capsys.readouterr().err
    assert "KILN_TELEGRAM_API_BASE" in err and server.token not in err
