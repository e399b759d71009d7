"""Fixtures of the channel unit tests (``tgkit``; the Bot API stand-in, one per module)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tgkit import Telegram, build_telegram

from kiln_dev.standins.telegram import TelegramServer


@pytest.fixture(scope="module")
def server() -> Iterator[TelegramServer]:
    running = TelegramServer().start()
    yield running
    running.stop()


@pytest.fixture
def telegram() -> Telegram:
    return build_telegram()
