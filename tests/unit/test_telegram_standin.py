"""The Bot API stand-in models what Kiln must cope with: every parameter recorded, topics,
migration, UTF-16 limits and slow answers (checked over HTTP, as Kiln's client sees it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from kiln_dev.standins.telegram import TelegramServer
from kiln_dev.standins.telegram_updates import entities, utf16_len

CHAT = -1001234567


@pytest.fixture(scope="module")
def server() -> Iterator[TelegramServer]:
    running = TelegramServer().start()
    yield running
    running.stop()


def api(server: TelegramServer, method: str, **params: object) -> dict:
    return httpx.post(f"{server.url}/bot{server.token}/{method}", json=params, timeout=10).json()


def test_every_parameter_is_recorded_json_and_form(server: TelegramServer) -> None:
    """Given a sendMessage with reply_parameters and message_thread_id (as JSON and as a
    form), then the recorded call holds both, decoded."""
    server.forum(CHAT, {7: "Renders"})
    reply = {"message_id": 3, "allow_sending_without_reply": True}
    api(server, "sendMessage", chat_id=CHAT, text="hi", message_thread_id=7, reply_parameters=reply)
    httpx.post(f"{server.url}/bot{server.token}/sendMessage", timeout=10,
               data={"chat_id": str(CHAT), "text": "form", "message_thread_id": "7",
                     "reply_parameters": json.dumps(reply)})
    sent = [c for c in server.calls_for(CHAT, "sendMessage") if c["text"] in ("hi", "form")]
    assert len(sent) == 2
    for call in sent:
        assert call["message_thread_id"] == 7 and call["reply_parameters"] == reply
        assert call["params"]["reply_parameters"] == reply
        assert call["result"]["message_thread_id"] == 7 and call["result"]["is_topic_message"]


def test_an_unknown_topic_is_refused_and_general_needs_no_thread(server: TelegramServer) -> None:
    server.forum(CHAT - 1, {7: "Renders"})
    refused = api(server, "sendMessage", chat_id=CHAT - 1, text="x", message_thread_id=99)
    assert refused == {"ok": False, "error_code": 400,
                       "description": "Bad Request: message thread not found"}
    general = api(server, "sendMessage", chat_id=CHAT - 1, text="x")
    assert general["ok"] and "message_thread_id" not in general["result"]


def test_a_migrated_group_answers_400_with_the_new_chat(server: TelegramServer) -> None:
    new_id = server.migrate(-4242)
    answer = api(server, "sendMessage", chat_id=-4242, text="hello")
    assert answer["error_code"] == 400 and "upgraded to a supergroup" in answer["description"]
    assert answer["parameters"] == {"migrate_to_chat_id": new_id}
    assert api(server, "sendMessage", chat_id=new_id, text="hello")["ok"]


def test_limits_count_utf16_code_units(server: TelegramServer) -> None:
    """Given 2048 emoji (4096 UTF-16 units) the text fits; one more unit does not. A caption
    of 513 emoji (1026 units, 513 code points) is refused as Telegram refuses it."""
    emoji = "🎨"
    assert utf16_len(emoji) == 2
    assert api(server, "sendMessage", chat_id=5, text=emoji * 2048)["ok"]
    too_long = api(server, "sendMessage", chat_id=5, text=emoji * 2048 + "a")
    assert too_long["description"] == "Bad Request: message is too long"
    files = {"document": ("a.glb", b"glTF", "model/gltf-binary")}
    refused = httpx.post(f"{server.url}/bot{server.token}/sendDocument", timeout=10,
                         data={"chat_id": "5", "caption": emoji * 513}, files=files).json()
    assert refused["description"] == "Bad Request: message caption is too long"


def test_a_slow_answer_takes_effect_at_once(server: TelegramServer) -> None:
    """Given a 0.5 s slow sendMessage, then the arrival is recorded at once and the answer
    comes after the delay."""
    server.slow("sendMessage", 0.5, chat_id=77, times=1)
    started = time.time()
    answer = api(server, "sendMessage", chat_id=77, text="slow")
    assert answer["ok"] and time.time() - started >= 0.5
    arrival = [a for a in server.arrivals if a["chat_id"] == 77][-1]
    assert arrival["at"] - started < 0.4
    assert server.calls_for(77, "sendMessage")[-1]["answered_at"] - arrival["at"] >= 0.5


def test_entities_are_found_anywhere_with_utf16_offsets() -> None:
    text = "🎨 make /image@kiln_bot a cat @kiln_bot"
    found = entities(text)
    assert found[0] == {"type": "bot_command", "offset": 8, "length": 15}
    assert found[1]["type"] == "mention" and found[1]["offset"] == 30
