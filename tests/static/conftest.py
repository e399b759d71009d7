"""Fixtures of the static checks (helpers live in tf_config.py, a unique module name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Importable whatever pytest's import mode; "conftest" itself is ambiguous across folders.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tf_config import INFRA, TfModule, load_module


@pytest.fixture(scope="session")
def tf() -> TfModule:
    """The root module, infra/*.tf."""
    module = load_module(INFRA)
    assert module.texts, f"no Terraform files in {INFRA}"
    return module


@pytest.fixture(scope="session")
def tf_modules() -> list[TfModule]:
    """The root module and every module under infra/modules/."""
    dirs = [INFRA, *sorted(p for p in (INFRA / "modules").glob("*") if p.is_dir())]
    return [load_module(d) for d in dirs]
