"""Helpers for tests (import as ``from support import ...``; tests/ is on sys.path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).parent / "events"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (a probe, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_terminal(services: Any, job_id: str, timeout: float = 45.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = services.store.get(job_id)
        if job and job["status"] in ("completed", "failed", "canceled"):
            return job
        return None

    return wait_for(done, timeout, what=f"job {job_id} to end")  # type: ignore[no-any-return]


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())
