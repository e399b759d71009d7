"""Fixtures of the runtime's unit tests: a Kiln composed of fakes (see ``rig.py``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import Rig, build_rig, kill_at

from kiln.runtime import notify


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield build_rig()


@pytest.fixture
def killed_after_ending(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Kill the worker between its ending write and the send (``revive`` undoes it)."""
    yield kill_at(monkeypatch, notify, "deliver")
