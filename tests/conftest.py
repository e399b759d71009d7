"""Shared fixtures: one real local stack per test session, started and stopped here.

The stack (Firestore, Pub/Sub and Storage emulators, the FCM stand-in, the ingress and
worker functions) starts on free ports, so a demo can run beside the tests. Tests keep
apart by using fresh user ids and job ids rather than wiping shared state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from kiln.adapters.firebase_auth import emulator_id_token
from kiln_dev.stack import LocalStack, StackConfig
from support import STACK_ENV


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """The session's stack. Nothing here touches ``os.environ``: every client is built from
    the stack's explicit settings, so other stacks can run in this process beside it."""
    with LocalStack(StackConfig(env=dict(STACK_ENV), sweep_interval=1.0)) as running:
        yield running


@pytest.fixture(scope="session")
def services(stack: LocalStack) -> Any:
    return stack.services()


@pytest.fixture
def uid() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def token(stack: LocalStack) -> Callable[[str], str]:
    def make(user: str) -> str:
        return emulator_id_token(user, stack.config.project)

    return make


@pytest.fixture
def api(stack: LocalStack, uid: str, token: Callable[[str], str]) -> Iterator[httpx.Client]:
    """An HTTP client for the local ingress, signed in as ``uid``."""
    with httpx.Client(base_url=stack.ingress_url, timeout=15,
                      headers={"Authorization": f"Bearer {token(uid)}"}) as client:
        yield client


@pytest.fixture
def fcm(stack: LocalStack) -> Any:
    stack.fcm.forget()
    return stack.fcm
