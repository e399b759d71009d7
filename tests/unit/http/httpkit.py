"""The HTTP API on fakes (``tests/unit/runtime/rig.py``), called in process (a unique
module name: ``from httpkit import …``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import flask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from rig import Rig, build_rig

from kiln.core.keys import Tenant
from kiln.http.api import handle
from kiln.runtime.keys import create_key

__all__ = ["Rig", "api_key", "build_rig", "call"]


def call(rig: Rig, authorization: str, method: str, path: str, body: Any = None, *,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, JSON answer, headers) of one request; ``raw`` is sent as the body as is."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    with flask.Flask(__name__).test_request_context(
            path, method=method, data=data,
            headers={"Authorization": authorization, "Content-Type": "application/json",
                     **(headers or {})}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json(), response.headers


def api_key(rig: Rig, tenant: str = "acme", *, allow_job_webhooks: bool = True) -> str:
    """An Authorization header for a new key of ``tenant`` (every scope)."""
    created = create_key(rig.services.keys, rig.clock, tenant=tenant,
                         scopes=["submit", "read", "cancel"])
    rig.services.keys.put_tenant(Tenant(tenant, None, allow_job_webhooks))
    return f"Bearer {created.secret}"
