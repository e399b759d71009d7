"""The HTTP API: acknowledge in milliseconds, never generate.

``POST /v1/jobs`` authenticates, validates, creates ``jobs/{jobId}`` (``pending``) and
publishes ``{jobId}``; that is the whole acknowledgement path. If the publish fails
after the document exists, the job is still accepted: the sweeper re-publishes
pending jobs, so nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import flask

from kiln import log
from kiln.adapters.firestore import utcnow
from kiln.compose import Services
from kiln.core import lifecycle
from kiln.core.errors import RequestError, RetryableError, TransitionError, ValidationError
from kiln.core.job import JobStatus, is_valid_job_id, new_job_id
from kiln.core.requests import parse_job_request
from kiln.runtime import actions

logger = log.get("ingress")

_JOB_PATH = re.compile(r"^/v1/jobs/(?P<job_id>[A-Za-z0-9_-]{1,64})(?P<action>:cancel|:retry)?$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

Handler = Callable[[flask.Request, Services], flask.Response]


def handle(request: flask.Request, services: Services) -> flask.Response:
    """Answer one request, with CORS headers for an allowed browser origin."""
    origin = cors_origin(request.headers.get("Origin"), services.settings)
    if request.method == "OPTIONS" and origin is not None:
        response = flask.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key",
            "Access-Control-Max-Age": "3600",
        })
    else:
        response = _handle(request, services)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Idempotent-Replayed"
        response.headers["Vary"] = "Origin"
    return response


def cors_origin(origin: str | None, settings: Any) -> str | None:
    """The origin to allow: listed in ``KILN_CORS_ORIGINS`` (``*`` = any; local default)."""
    allowed = [o.strip() for o in (settings.cors_origins or ("*" if settings.local else "")).split(",")]
    if not origin or not any(allowed):
        return None
    return origin if "*" in allowed or origin in allowed else None


def _handle(request: flask.Request, services: Services) -> flask.Response:
    """Route one request; every error becomes ``{error: {code, message}}``."""
    try:
        return _route(request, services)
    except RequestError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except RetryableError as exc:
        log.event(logger, "dependency unavailable", logging.WARNING, code=exc.code)
        return error_response(503, exc.code, "The service is busy; try again shortly.")


def _route(request: flask.Request, services: Services) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    method = request.method
    if path == "/healthz":
        return json_response(200, {"status": "ok"})
    if path == "/telegram/webhook":
        _require(method, "POST")
        from kiln.channels.telegram.webhook import handle_update

        return handle_update(request, services)
    if path == "/v1/jobs":
        if method == "GET":
            return list_jobs(request, services)
        _require(method, "POST")
        return create_job(request, services)
    match = _JOB_PATH.match(path)
    if match is None:
        raise RequestError(404, "not_found", f"No such endpoint: {path}")
    job_id, action = match["job_id"], match["action"]
    if action is None:
        _require(method, "GET")
        return get_job(request, services, job_id)
    _require(method, "POST")
    if action == ":cancel":
        return cancel_job(request, services, job_id)
    return retry_job(request, services, job_id)


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise RequestError(405, "method_not_allowed", f"Use {expected} for this endpoint.")


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
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "invalid_json", "The body is not valid JSON.") from exc


def create_job(request: flask.Request, services: Services) -> flask.Response:
    settings = services.settings
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise RequestError(413, "body_too_large",
                           f"The body must be at most {settings.max_body_bytes} bytes.")
    uid = services.auth.verify(request.headers.get("Authorization"))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise RequestError(400, "invalid_idempotency_key",
                           "Idempotency-Key must be 1-255 printable ASCII characters.")
    try:
        job_request = parse_job_request(read_json(request, settings.max_body_bytes))
    except ValidationError as exc:
        raise RequestError(400, exc.code, exc.message) from exc
    job_id, created, job = accept_job(services, uid=uid, channel="app", job_request=job_request,
                                      idempotency_key=key)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return json_response(202, {"jobId": job_id, "status": job["status"]}, headers)


def accept_job(
    services: Services,
    *,
    uid: str,
    channel: str,
    job_request: Any,
    idempotency_key: str | None,
    extra_server: dict[str, Any] | None = None,
) -> tuple[str, bool, dict[str, Any]]:
    """Record and publish a job (shared by every channel). Returns (id, created, doc).

    The same (uid, idempotency key) always maps to the same job id; a replay returns
    that job without a second publish.
    """
    job_id = new_job_id(uid, idempotency_key)
    doc = lifecycle.new_job(
        uid=uid, channel=channel, request=job_request, now=utcnow(),
        max_age_seconds=services.settings.job_max_age_seconds,
        idempotency_key=idempotency_key, extra_server=extra_server,
    )
    if not services.store.create(job_id, doc):
        existing = services.store.get(job_id) or {}
        same = (existing.get("uid") == uid and lifecycle.server(existing).get("fingerprint")
                == job_request.fingerprint())
        if not same:
            raise RequestError(422, "idempotency_key_reused",
                               "This Idempotency-Key was already used for a different request.")
        return job_id, False, existing
    with log.job_context(job_id):
        try:
            services.queue.publish(job_id)
        except RetryableError:
            # Accepted all the same: the document is durable and the sweeper re-publishes.
            log.event(logger, "publish failed; the sweeper will re-publish", logging.WARNING)
        log.event(logger, "job accepted", kind=job_request.kind, channel=channel)
    return job_id, True, doc


def _owned_job(request: flask.Request, services: Services, job_id: str) -> tuple[str, dict]:
    uid = services.auth.verify(request.headers.get("Authorization"))
    job = services.store.get(job_id) if is_valid_job_id(job_id) else None
    if job is None or job.get("uid") != uid:
        # The same answer for "missing" and "not yours": ids are not probeable.
        raise RequestError(404, "not_found", "No such job.")
    return uid, job


def get_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    _uid, job = _owned_job(request, services, job_id)
    return json_response(200, lifecycle.public_view(job_id, job))


def list_jobs(request: flask.Request, services: Services) -> flask.Response:
    """The caller's most recent jobs (newest first), for callers that cannot listen."""
    uid = services.auth.verify(request.headers.get("Authorization"))
    try:
        limit = max(1, min(100, int(request.args.get("limit", "20"))))
    except ValueError as exc:
        raise RequestError(400, "invalid_limit", "'limit' must be a number.") from exc
    jobs = [lifecycle.public_view(job_id, job) for job_id, job in
            services.store.find(uid=uid, limit=500)]
    jobs.sort(key=lambda j: j["createdAt"] or "", reverse=True)
    return json_response(200, {"jobs": jobs[:limit]})


def cancel_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    _owned_job(request, services, job_id)
    with _conflict_on_invalid_transition():
        actions.cancel(services, job_id, by="owner")
    return json_response(200, {"jobId": job_id, "status": JobStatus.CANCELED.value})


def retry_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    _owned_job(request, services, job_id)
    with _conflict_on_invalid_transition():
        outcome = actions.retry(services, job_id, by="owner")
    return json_response(202, {"jobId": job_id, "status": outcome.status})


@contextlib.contextmanager
def _conflict_on_invalid_transition() -> Iterator[None]:
    try:
        yield
    except TransitionError as exc:
        raise RequestError(409, "invalid_transition", exc.message) from exc


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(payload), status=status, mimetype="application/json",
                          headers=headers or {})


def error_response(status: int, code: str, message: str) -> flask.Response:
    return json_response(status, {"error": {"code": code, "message": message}})
