"""Fixtures of the HTTP edge's unit tests (``httpkit``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from httpkit import Rig, build_rig


@pytest.fixture
def rig() -> Rig:
    return build_rig()
