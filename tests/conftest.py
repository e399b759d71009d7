"""Shared fixtures: one real local stack per test session, started and stopped here.

The stack (Firestore, Pub/Sub and Storage emulators, the FCM stand-in, the ingress and
worker functions) starts on free ports, so a demo can run beside the tests. Tests keep
apart by using fresh user ids and job ids rather than wiping shared state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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


@pytest.fixture(scope="session")
def borrowed(stack: LocalStack) -> Callable[[], dict[str, Any]]:
    """``StackConfig`` fields for a test file's own stack that uses the session stack's
    warm Firestore and Pub/Sub emulators under a project of its own (no two more JVMs
    to start and warm up); its functions, Storage, Cloud Tasks and FCM are its own."""
    def config() -> dict[str, Any]:
        return {"firestore_port": stack.config.firestore_port,
                "pubsub_port": stack.config.pubsub_port, "borrowed": ("firestore", "pubsub"),
                "project": f"kiln-test-{uuid.uuid4().hex[:8]}"}

    return config


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


# --- long operator commands, run beside the suite ------------------------------------------
#
# A test marked ``background(command=…)`` checks what a long operator command (the chaos run:
# its own stack, about a minute, mostly waiting on timers) printed. ``command(workdir)``
# returns the argv (run in ``workdir``, with the marker's ``env`` added to the environment);
# the test gets the running :class:`Background` from the ``background`` fixture.
#
# In one pytest process the command starts as soon as the tests are chosen and the test
# runs last, so the rest of the suite runs meanwhile instead of after it. Under pytest-xdist
# (``make test`` runs two workers) every worker collects every test, so none starts anything
# at collection: the test goes first instead and starts its command when it runs, and the
# other worker goes on with the rest (``--dist loadfile --no-loadscope-reorder`` hands out
# files in the order collected).


class Background:
    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.output = workdir / "output.txt"
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                         cwd=workdir, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})})

    def wait(self, timeout: float) -> tuple[int, str]:
        """The exit code and the output's tail, once the command has ended."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return code, self.output.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM (the command stops its own stack), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_BACKGROUND = pytest.StashKey[Background]()
_STARTED: list[Background] = []


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:
        return
    early = [item for item in items if item.get_closest_marker("background")]
    if _in_xdist_worker(config):
        items[:] = early + [item for item in items if item not in early]
        return
    items[:] = [item for item in items if item not in early] + early
    for item in early:
        item.stash[_BACKGROUND] = _start_background(item)


def _in_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _start_background(item: pytest.Item) -> Background:
    marker = item.get_closest_marker("background")
    assert marker is not None
    workdir = Path(tempfile.mkdtemp(prefix="kiln-background-"))
    started = Background(marker.kwargs["command"](workdir), workdir, marker.kwargs.get("env"))
    _STARTED.append(started)
    return started


def pytest_sessionfinish(session: pytest.Session) -> None:
    for started in _STARTED:  # a run stopped early (-x, Ctrl-C) leaves nothing behind
        started.stop()
        shutil.rmtree(started.workdir, ignore_errors=True)


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Background:
    """The test's command: started at collection, or now under pytest-xdist."""
    if _BACKGROUND not in request.node.stash:
        request.node.stash[_BACKGROUND] = _start_background(request.node)
    return request.node.stash[_BACKGROUND]
