"""``BotClient.call(within=)``: a call ends within its seconds however late Telegram
answers (the Bot API stand-in answering late), and one with no time left is not made."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from kiln.channels.telegram.client import BotClient
from kiln.core.errors import RetryableError
from kiln_dev.standins.telegram import TelegramServer


@pytest.fixture
def bot(server: TelegramServer) -> Iterator[BotClient]:
    client = BotClient(server.token, server.url)
    yield client
    client.close()


@pytest.fixture
def chat() -> int:
    return random.randint(10**8, 10**9)


def test_a_call_ends_within_its_seconds_when_telegram_answers_late(
        bot: BotClient, server: TelegramServer, chat: int) -> None:
    """Given Telegram answering 3 s late, when a call may take 0.3 s, then it raises a
    retryable timeout long before the answer (httpx's own read timeout is 10 s)."""
    server.slow("sendMessage", 3.0, chat_id=chat, times=1)
    started = time.monotonic()
    with pytest.raises(RetryableError) as raised:
        bot.send_message(chat, "hello", within=0.3)
    assert raised.value.code == "telegram_timeout"
    assert time.monotonic() - started < 2.0


def test_a_call_with_no_time_left_is_not_made(
        bot: BotClient, server: TelegramServer, chat: int) -> None:
    """Given no time left, then the call raises a retryable timeout and Telegram sees
    nothing; the same call with time left goes through."""
    with pytest.raises(RetryableError) as raised:
        bot.send_message(chat, "hello", within=0.0)
    assert raised.value.code == "telegram_timeout"
    assert server.calls_for(chat) == []
    assert bot.send_message(chat, "hello", within=5.0) is not None
    assert [c["method"] for c in server.calls_for(chat)] == ["sendMessage"]
