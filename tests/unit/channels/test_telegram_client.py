"""The Bot API client's error mapping, against the local Bot API server (no mocks)."""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator

import pytest

from kiln.channels.telegram.client import BotBlockedError, BotClient, TelegramApiError
from kiln.channels.telegram.delivery import Address, say_in_place
from kiln.core.errors import ConfigError, PermanentError, RetryableError
from kiln_dev.stack import free_port
from kiln_dev.standins.telegram import TelegramServer

CHAT = 4242


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def blocked() -> list[int | str]:
    return []


@pytest.fixture
def bot(server: TelegramServer, slept: list[float], blocked: list[int | str]) -> Iterator[BotClient]:
    server.faults.clear()
    server.blocked.clear()
    client = BotClient(server.token, server.url, on_blocked=blocked.append, sleep=slept.append)
    yield client
    client.close()


def test_a_call_returns_the_result(bot, server):
    sent = bot.send_message(CHAT, "hello", reply_to=3)
    assert sent is not None and sent["text"] == "hello" and sent["chat"]["id"] == CHAT
    assert sent["reply_to_message"]["message_id"] == 3
    assert bot.username == "kiln_local_bot" and bot.bot_id == server.bot_id


def test_a_short_429_is_waited_out_and_retried_once(bot, server, slept):
    """Given a 429 with retry_after 2 (≤ max_wait), then the client waits 2 s and succeeds."""
    server.fail("sendMessage", chat_id=CHAT, error_code=429, retry_after=2)
    assert bot.send_message(CHAT, "after the wait") is not None
    assert slept == [2.0]


def test_a_long_or_repeated_429_raises_retryable_with_retry_after(bot, server, slept):
    server.fail("sendMessage", chat_id=CHAT, error_code=429, retry_after=30)
    with pytest.raises(RetryableError) as long_wait:
        bot.send_message(CHAT, "too long to wait")
    assert long_wait.value.retry_after == 30 and long_wait.value.code == "telegram_rate_limited"
    assert slept == []

    server.fail("sendMessage", chat_id=CHAT, error_code=429, retry_after=1, times=2)
    with pytest.raises(RetryableError) as twice:
        bot.send_message(CHAT, "refused twice")
    assert twice.value.retry_after == 1 and slept == [1.0]


def test_max_wait_zero_never_sleeps(bot, server, slept):
    server.fail("editMessageText", error_code=429, retry_after=1)
    with pytest.raises(RetryableError):
        bot.edit_message_text(CHAT, 1, "x", max_wait=0)
    assert slept == []


def test_403_reports_the_chat_blocked_and_is_not_retried(bot, server, blocked):
    server.block(CHAT)
    with pytest.raises(BotBlockedError) as exc:
        bot.send_message(CHAT, "anyone there?")
    assert exc.value.chat_id == CHAT and blocked == [CHAT]
    assert isinstance(exc.value, PermanentError)
    assert len([c for c in server.calls_for(CHAT) if c["text"] == "anyone there?"]) == 1


def test_ignorable_400s_return_none(bot):
    """Editing or deleting a message that is gone is a no-op; editing one to the text it
    already says (an earlier edit took effect) counts as edited."""
    sent = bot.send_message(CHAT, "same")
    assert sent is not None
    assert bot.edit_message_text(CHAT, sent["message_id"], "same") == {
        "message_id": sent["message_id"], "text": "same"}
    assert bot.edit_message_text(CHAT, 99_999, "gone") is None
    assert bot.delete_message(CHAT, sent["message_id"]) is True
    assert bot.delete_message(CHAT, sent["message_id"]) is False


def test_other_400s_are_permanent_with_telegrams_reason(bot):
    with pytest.raises(TelegramApiError) as exc:
        bot.send_message(CHAT, " ")
    assert exc.value.error_code == 400 and "message text is empty" in exc.value.description


def test_5xx_is_retryable(bot, server):
    server.fail("sendMessage", error_code=502, description="Bad Gateway")
    with pytest.raises(RetryableError) as exc:
        bot.send_message(CHAT, "x")
    assert exc.value.code == "telegram_unavailable"


def test_a_refused_token_is_permanent_and_not_shown(server):
    wrong = "123456789:WRONG-token-value-that-must-stay-secret"
    client = BotClient(wrong, server.url)
    with pytest.raises(PermanentError) as exc:
        client.get_me()
    assert exc.value.code == "telegram_unauthorized"
    assert "WRONG-token" not in "".join(traceback.format_exception(exc.value))


def test_network_errors_are_retryable_and_never_show_the_token(caplog):
    """Given nothing listening, then RetryableError whose message, traceback and chained
    causes hold no URL; httpx's own log line shows ``bot***``."""
    token = "123456789:SECRET-token-value-never-in-logs"
    client = BotClient(token, f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.DEBUG), pytest.raises(RetryableError) as exc:
        client.send_message(CHAT, "x")
    assert exc.value.code == "telegram_unreachable"
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert "SECRET-token" not in "".join(traceback.format_exception(exc.value))
    assert "SECRET-token" not in caplog.text


def test_the_token_is_not_in_httpx_log_lines(server, caplog):
    client = BotClient(server.token, server.url)
    with caplog.at_level(logging.INFO, logger="httpx"):
        client.get_me()
    assert "/bot***/getMe" in caplog.text and server.token not in caplog.text


def test_uploads_stream_the_file_with_name_and_type(bot, server, slept):
    """A multipart upload carries the file's name, type and bytes; a 429 retry re-sends it whole."""
    data = b"glTF" + bytes(range(256)) * 4000
    server.fail("sendDocument", chat_id=CHAT, error_code=429, retry_after=1)
    sent = bot.send_document(CHAT, io.BytesIO(data), filename="cube.glb",
                             content_type="model/gltf-binary", caption="🧊 a cube")
    assert sent is not None and sent["document"]["file_size"] == len(data)
    upload = server.calls_for(CHAT, "sendDocument")[-1]
    assert upload["file"]["name"] == "cube.glb" and upload["file"]["size"] == len(data)
    assert upload["file"]["content_type"] == "model/gltf-binary" and upload["caption"] == "🧊 a cube"
    assert slept == [1.0]


def test_a_missing_token_is_a_config_error():
    with pytest.raises(ConfigError):
        BotClient("", "http://127.0.0.1:1")


def test_a_migrated_group_is_followed_to_its_supergroup(server):
    """Given a group that became a supergroup, when a message is sent to the old id, then
    on_migrated(old, new) is called once, the call is repeated to the new chat, and later
    calls to the old id go straight to the new one."""
    moved: list[tuple[int | str, int]] = []
    client = BotClient(server.token, server.url, on_migrated=lambda old, new: moved.append((old, new)))
    new_id = server.migrate(-777001)
    sent = client.send_message(-777001, "hello", thread_id=None)
    assert sent is not None and sent["chat"]["id"] == new_id and moved == [(-777001, new_id)]
    client.send_message(-777001, "again")
    assert [c["ok"] for c in server.calls_for(-777001)] == [False]
    assert len(server.calls_for(new_id, "sendMessage")) == 2
    client.close()


def test_a_migrated_groups_messages_are_not_touched_in_its_supergroup(server):
    """Given a group that became a supergroup holding a message with the same id as one
    of the group's, when the client edits or deletes the group's message, or replies to
    it, then nothing in the supergroup is edited or deleted (the edit and the delete are
    no-ops), and the reply goes to the supergroup without naming that message."""
    client = BotClient(server.token, server.url)
    group = -777003
    new_id = server.migrate(group)
    there = client.send_message(new_id, "someone else's message in the supergroup")
    assert there is not None
    same_id = there["message_id"]
    assert client.edit_message_text(group, same_id, "Done") is None
    assert client.delete_message(group, same_id) is False
    client.send_message(group, "your result", reply_to=same_id)
    edits_or_deletes = [c for c in server.calls_for(new_id)
                        if c["method"] in ("editMessageText", "deleteMessage")]
    assert edits_or_deletes == []
    (reply,) = [c for c in server.calls_for(new_id, "sendMessage") if c["text"] == "your result"]
    assert not reply.get("reply_parameters")
    client.close()


def test_a_message_for_a_topic_deleted_since_goes_to_general(bot, server):
    """Given a forum whose topic 5 was deleted while a job ran, when its result is sent to
    that topic, then Telegram's 400 "message thread not found" is followed by the same
    message in General (no thread), which Telegram takes; a topic that exists is kept."""
    server.forum(-777004, {6: "Renders"})
    sent = bot.send_message(-777004, "your result", thread_id=5)
    assert sent is not None and sent.get("message_thread_id") is None
    refused, taken = server.calls_for(-777004, "sendMessage")
    assert (refused["ok"], taken["ok"]) == (False, True)
    assert taken.get("message_thread_id") is None
    kept = bot.send_message(-777004, "in its topic", thread_id=6)
    assert kept is not None and kept["message_thread_id"] == 6


def test_topic_and_reply_parameters_reach_the_api(bot, server):
    server.forum(-777002, {5: "Renders"})
    bot.send_message(-777002, "in the topic", reply_to=9, thread_id=5)
    bot.send_document(-777002, io.BytesIO(b"glTF"), filename="a.glb",
                      content_type="model/gltf-binary", caption="🧊", reply_to=9, thread_id=5)
    for call in server.calls_for(-777002):
        assert call["ok"] and call["message_thread_id"] == 5
        assert call["reply_parameters"] == {"message_id": 9, "allow_sending_without_reply": True}


def test_a_message_already_edited_is_not_said_again(bot, server):
    """Given a "working" message an earlier attempt turned into the failure text (its
    answer lost), when the redelivery says it in place again, then Telegram's "message is
    not modified" counts as done: no second copy is sent."""
    working = bot.send_message(CHAT, "Working on it…")
    to = Address(CHAT, reply_to=None, status_id=working["message_id"])
    assert say_in_place(bot, to, "It failed: no.") is True
    before = len(server.calls_for(CHAT, "sendMessage"))
    assert say_in_place(bot, to, "It failed: no.") is True
    assert len(server.calls_for(CHAT, "sendMessage")) == before
