"""Fixtures of the webhook unit tests: Kiln on fakes (``hookkit``) and a stand-in
receiver on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hookkit import Kit, build_kit

from kiln_dev.standins.webhook_receiver import WebhookReceiver


@pytest.fixture
def kit() -> Kit:
    return build_kit()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r
