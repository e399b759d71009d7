"""Fixtures of the runtime's unit tests: a Kiln composed of fakes (see ``rig.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import Rig, build_rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield build_rig()
