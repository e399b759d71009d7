"""JSON in and out at the HTTP edge: bodies read within a limit, answers and errors in
the contract's shape (``{error: {code, message}}``)."""

from __future__ import annotations

import json
from typing import Any

import flask

from kiln.core.errors import RequestError


def read_json(request: flask.Request, max_bytes: int) -> Any:
    """The JSON body, refusing oversized or malformed ones before they cost anything."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestError(413, "body_too_large", f"The body must be at most {max_bytes} bytes.")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise RequestError(413, "body_too_large", f"The body must be at most {max_bytes} bytes.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, "invalid_json", "The body is not valid JSON.") from exc


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(payload), status=status, mimetype="application/json",
                          headers=headers or {})


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> flask.Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)
