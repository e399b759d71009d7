"""Fixtures of the channel unit tests (``tgkit``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tgkit import Telegram, build_telegram


@pytest.fixture
def telegram() -> Telegram:
    return build_telegram()
