"""The ingress on fakes (``tests/unit/runtime/rig.py``) with Telegram configured, and
``telegramChats`` documents in a dict (a unique module name: ``from tgkit import …``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from rig import Rig, build_rig

from kiln.channels.telegram.webhook import SECRET_HEADER
from kiln.http.api import handle

SECRET = "s3cret"
#: Three jobs a day for every chat, so a test reaches the quota's edge in a few updates.
PLANS = "free:daily=3,running=2,priority=0;pro:daily=2000,running=8,priority=10"


@dataclass
class ChatDocs:
    """The few calls ``ChatStore`` makes for the webhook, on documents in a dict."""

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def collection(self, _name: str) -> ChatDocs:
        return self

    def document(self, doc_id: str) -> _Doc:
        return _Doc(self.docs, doc_id)


@dataclass
class _Doc:
    docs: dict[str, dict[str, Any]]
    doc_id: str

    def set(self, fields: dict[str, Any], merge: bool = False) -> None:
        base = self.docs.get(self.doc_id, {}) if merge else {}
        self.docs[self.doc_id] = {**base, **fields}

    def get(self) -> _Doc:
        return self

    def to_dict(self) -> dict[str, Any] | None:
        return self.docs.get(self.doc_id)


@dataclass
class Telegram:
    """The ingress on fakes, as Telegram's webhook calls reach it."""

    rig: Rig
    chats: ChatDocs

    def post(self, update: Any) -> tuple[int, Any]:
        with flask.Flask(__name__).test_request_context(
                "/telegram/webhook", method="POST", json=update, headers={SECRET_HEADER: SECRET}):
            response = handle(flask.request, self.rig.services)
        return response.status_code, response.get_json()


def build_telegram() -> Telegram:
    rig = build_rig(telegram_bot_token="123456789:AAAA", telegram_webhook_secret=SECRET,
                    plans=PLANS)
    chats = ChatDocs()
    rig.services.firestore = chats  # what ``ChatStore`` is built on (a cached property)
    return Telegram(rig, chats)
