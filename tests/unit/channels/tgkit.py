"""The ingress on fakes (``tests/unit/runtime/rig.py``) with Telegram configured, and the
in-memory chat store (a unique module name: ``from tgkit import …``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from rig import Rig, build_rig

from kiln.channels.telegram.bot import use_chat_store
from kiln.channels.telegram.webhook import SECRET_HEADER
from kiln.http.api import handle
from kiln_dev.fakes_chats import InMemoryChatStore

SECRET = "s3cret"
#: Three jobs a day for every chat, so a test reaches the quota's edge in a few updates.
PLANS = "free:daily=3,running=2,priority=0;pro:daily=2000,running=8,priority=10"


@dataclass
class Telegram:
    """The ingress on fakes, as Telegram's webhook calls reach it."""

    rig: Rig
    chats: InMemoryChatStore

    def post(self, update: Any) -> tuple[int, Any]:
        with flask.Flask(__name__).test_request_context(
                "/telegram/webhook", method="POST", json=update, headers={SECRET_HEADER: SECRET}):
            response = handle(flask.request, self.rig.services)
        return response.status_code, response.get_json()


def build_telegram(**settings: Any) -> Telegram:
    rig = build_rig(telegram_bot_token="123456789:AAAA", telegram_webhook_secret=SECRET,
                    **{"plans": PLANS, **settings})
    chats = InMemoryChatStore()
    use_chat_store(rig.services, chats)
    return Telegram(rig, chats)
