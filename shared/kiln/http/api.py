"""The HTTP edge: one router for the app API and the Telegram webhook; acknowledge in
milliseconds, never generate.

Routes are werkzeug rules (the framework's router); handlers are small functions over
the runtime (``kiln.runtime.accept``, ``kiln.runtime.actions``). The domain raises its
own errors; :func:`handle` alone turns them into statuses and ``{error: {code, message}}``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule

from kiln import log, tracing
from kiln.channels.telegram.webhook import handle_update
from kiln.compose import Services
from kiln.core import timeline
from kiln.core.batches import new_batch_id
from kiln.core.errors import (
    ConflictError,
    KilnError,
    LimitError,
    NotFoundError,
    OverloadedError,
    RequestError,
    RetryableError,
    TransitionError,
    ValidationError,
)
from kiln.core.job import Job, JobStatus, is_valid_job_id, new_job_id
from kiln.core.requests import parse_job_request
from kiln.http import batches, framework, webhooks
from kiln.http.auth import authenticate
from kiln.http.responses import (
    error_response,
    finish_body,
    json_response,
    read_body,
    read_json,
    refuse_oversized,
)
from kiln.runtime import actions
from kiln.runtime.accept import accept_job, check_request, same_request
from kiln.runtime.admission import admit, give_back
from kiln.runtime.callbacks import receive
from kiln.webhooks.endpoints import job_webhook

logger = log.get("ingress")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: A provider callback names one task; anything larger is not one.
CALLBACK_MAX_BYTES = 64 * 1024
Handler = Callable[..., flask.Response]

#: Domain error → HTTP status (the only place that knows both).
STATUS: dict[type[KilnError], int] = {
    ValidationError: 400, NotFoundError: 404, TransitionError: 409, ConflictError: 422,
}


class _JobId(BaseConverter):
    regex = r"(?!__)[A-Za-z0-9_-]{1,64}"  # Firestore reserves ids like __x__; Kiln makes none


class _Provider(BaseConverter):
    regex = r"[a-z0-9_-]{1,32}"


# --- handlers ---------------------------------------------------------------------------


def healthz(request: flask.Request, services: Services) -> flask.Response:
    return json_response(200, {"status": "ok"})


def create_job(request: flask.Request, services: Services) -> flask.Response:
    settings = services.settings
    refuse_oversized(request, request.content_length, settings.max_body_bytes)  # before auth
    principal = authenticate(request, services, "submit")
    uid = principal.uid
    key = idempotency_key(request)
    body = read_json(request, settings.max_body_bytes)
    # A replay of a keyed request was admitted and checked the first time: it costs no
    # quota, and is answered as then whatever the settings say now (a lower prompt limit,
    # per-job webhooks turned off), so a client's retry never turns into a refusal.
    existing = services.store.get(new_job_id(uid, key)) if key is not None else None
    if existing is not None:
        return _replayed(existing, uid, body)
    server = job_webhook(services, principal, body)  # the job's own webhook URL, if any
    job_request = parse_job_request(body)
    if server is not None:  # part of what was asked: a key reused with another URL is a 422
        job_request = dataclasses.replace(job_request, webhook=server["webhook"])
    # A request Kiln would refuse is refused as such (400), quota or not (a 429 would
    # tell the client to send it again after midnight).
    check_request(job_request, settings)
    # The plan is the principal's (an app user's trusted claim, an API key's tenant).
    admission = None
    try:
        admission = admit(services, uid=uid, channel=principal.channel, plan=principal.plan,
                          defer=True)
    except LimitError:
        # A request with the same key, racing this one, was admitted and created its job
        # meanwhile (its ticket may be the last of today's): this one is its replay, or a
        # 422 for another body, never a refusal of a job that was accepted.
        if key is None or not (_made(services, new_job_id(uid, key))
                               or _batch_made(services, new_batch_id(uid, key))):
            raise  # (a batch's key: the job's commit answers 422, not this 429)
    accepted = accept_job(services, uid=uid, channel=principal.channel, request=job_request,
                          idempotency_key=key, server=server, admission=admission)
    headers = {} if accepted.created else {"Idempotent-Replayed": "true"}
    return json_response(202, {"jobId": accepted.job_id, "status": accepted.status.value}, headers)


def _replayed(existing: Job, uid: str, body: Any) -> flask.Response:
    """The answer to a replay of the request that made ``existing``; 422 when the body
    asks for something else (its webhook URL included).

    Raises:
        ConflictError: ``idempotency_key_reused``.
        RequestError: the body is not a job request at all (as for a new job).
    """
    webhook = body.pop("webhook", None) if isinstance(body, dict) else None
    if webhook is not None and not isinstance(webhook, str):  # (as a first request's)
        raise RequestError(400, "invalid_webhook_url", "'webhook' must be an https URL.")
    job_request = parse_job_request(body)
    if isinstance(webhook, str):
        job_request = dataclasses.replace(job_request, webhook=webhook)
    if existing.uid != uid or not same_request(existing, job_request):
        raise ConflictError("This Idempotency-Key was already used for a different request.",
                            code="idempotency_key_reused")
    return json_response(202, {"jobId": existing.id, "status": existing.status.value},
                         {"Idempotent-Replayed": "true"})


def _made(services: Services, job_id: str) -> bool:
    """Whether the job exists; False when the store cannot say (the refusal stands)."""
    try:
        return services.store.get(job_id) is not None
    except KilnError:
        return False


def _batch_made(services: Services, batch_id: str) -> bool:
    """Whether the batch exists; False when the store cannot say (the refusal stands)."""
    try:
        return services.batches.get(batch_id) is not None
    except KilnError:
        return False


def idempotency_key(request: flask.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise RequestError(400, "invalid_idempotency_key",
                           "Idempotency-Key must be 1-255 printable ASCII characters.")
    return key


def create_batch(request: flask.Request, services: Services) -> flask.Response:
    # (read after authentication: a stranger gets 401, not a verdict on its header)
    return batches.create_batch(request, services, lambda: idempotency_key(request))


def _owned_job(request: flask.Request, services: Services, job_id: str, scope: str) -> Job:
    return _owned(services, authenticate(request, services, scope).uid, job_id)


def _owned(services: Services, uid: str, job_id: str) -> Job:
    job = services.store.get(job_id) if is_valid_job_id(job_id) else None
    if job is None or job.uid != uid:
        raise NotFoundError("No such job.")
    return job


def get_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    return json_response(200, _owned_job(request, services, job_id, "read").public_view())


def get_job_timeline(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    """The job's steps and when each happened (docs/timeline.md), for its owner's apps."""
    return json_response(200, timeline.view(_owned_job(request, services, job_id, "read")))


def list_jobs(request: flask.Request, services: Services) -> flask.Response:
    """The caller's jobs, newest first, a page at a time (``limit``, then the answer's
    ``nextPageToken`` as ``pageToken`` for the next page), for callers that cannot listen."""
    uid = authenticate(request, services, "read").uid
    raw_limit = request.args.get("limit", "20")
    if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 100):
        raise RequestError(400, "invalid_limit", "'limit' must be a whole number from 1 to 100.")
    limit, token = int(raw_limit), request.args.get("pageToken")
    jobs = services.store.recent(uid, limit + 1, read_page_token(token) if token else None)
    answer: dict[str, Any] = {"jobs": [job.public_view() for job in jobs[:limit]]}
    if len(jobs) > limit:  # (one more was read: there is a next page)
        answer["nextPageToken"] = page_token(jobs[limit - 1])
    return json_response(200, answer)


def page_token(last: Job) -> str:
    """Where the page after ``last`` starts: its creation time and id, opaque to clients
    (they only ever read their own jobs, so a made-up token shows nothing new)."""
    assert last.created_at is not None
    mark = f"{last.created_at.astimezone(dt.UTC).isoformat(timespec='microseconds')}|{last.id}"
    return base64.urlsafe_b64encode(mark.encode()).decode().rstrip("=")


def read_page_token(token: str) -> tuple[dt.datetime, str]:
    """The (creation time, id) of a ``pageToken``.

    Raises:
        RequestError: 400 ``invalid_page_token``: not one this API gave.
    """
    try:
        stamp, job_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(
            "ascii").split("|")
        given = dt.datetime.fromisoformat(stamp)
        created = given.astimezone(dt.UTC) if given.tzinfo else None  # (years 1–9999 in UTC)
    except (ValueError, UnicodeDecodeError, OverflowError):
        created, job_id = None, ""
    if created is None or not is_valid_job_id(job_id):
        raise RequestError(400, "invalid_page_token", "'pageToken' must be a nextPageToken "
                           "this API gave; start again without it.")
    return created, job_id


def cancel_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    _owned_job(request, services, job_id, "cancel")
    outcome = actions.cancel(services, job_id, by="owner")
    return json_response(200, {"jobId": job_id, "status": outcome.status.value})


def retry_job(request: flask.Request, services: Services, job_id: str) -> flask.Response:
    """A new run of a failed job: admitted like a new job (a day's quota counts runs, so
    retrying a failed job again and again is not free), the quota given back when the
    retry changes nothing (already retried, or refused)."""
    principal = authenticate(request, services, "submit")
    job = _owned(services, principal.uid, job_id)
    admission = None
    if job.status is JobStatus.FAILED:
        admission = admit(services, uid=principal.uid, channel=principal.channel,
                          plan=principal.plan, holder=job_id)
    try:
        outcome = actions.retry(services, job_id, by="owner")
    except BaseException:
        give_back(services, admission)
        raise
    if not outcome.changed:
        give_back(services, admission)
    return json_response(202, {"jobId": job_id, "status": outcome.status.value})


def telegram_webhook(request: flask.Request, services: Services) -> flask.Response:
    return handle_update(request, services)


def provider_event(request: flask.Request, services: Services, provider: str) -> flask.Response:
    """A provider's callback: verified, de-duplicated, its job woken (never generated)."""
    raw = read_body(request, CALLBACK_MAX_BYTES)
    outcome = receive(services, provider, dict(request.headers), raw, request.args.to_dict())
    return json_response(200, {"status": outcome.value})


# --- routing ----------------------------------------------------------------------------

#: Every route of the ingress: the app API and, beside it, the Telegram webhook.
ROUTES = Map([
    Rule("/healthz", methods=["GET"], endpoint=healthz),
    Rule("/telegram/webhook", methods=["POST"], endpoint=telegram_webhook),
    Rule("/v1/jobs", methods=["GET"], endpoint=list_jobs),
    Rule("/v1/jobs", methods=["POST"], endpoint=create_job),
    Rule("/v1/jobs/<job:job_id>", methods=["GET"], endpoint=get_job),
    Rule("/v1/jobs/<job:job_id>/timeline", methods=["GET"], endpoint=get_job_timeline),
    Rule("/v1/jobs/<job:job_id>:cancel", methods=["POST"], endpoint=cancel_job),
    Rule("/v1/jobs/<job:job_id>:retry", methods=["POST"], endpoint=retry_job),
    Rule("/v1/batches", methods=["POST"], endpoint=create_batch),
    Rule("/v1/batches/<job:batch_id>", methods=["GET"], endpoint=batches.get_batch),
    Rule("/v1/batches/<job:batch_id>:cancel", methods=["POST"], endpoint=batches.cancel_batch),
    Rule("/v1/providers/<provider:provider>/events", methods=["POST"], endpoint=provider_event),
    Rule("/v1/webhooks", methods=["GET"], endpoint=webhooks.list_endpoints),
    Rule("/v1/webhooks", methods=["POST"], endpoint=webhooks.create_endpoint),
    Rule("/v1/webhooks/secret", methods=["GET"], endpoint=webhooks.job_secret),
    Rule("/v1/webhooks/<job:endpoint_id>", methods=["DELETE"], endpoint=webhooks.delete_endpoint),
], converters={"job": _JobId, "provider": _Provider}, strict_slashes=False, merge_slashes=False)


@tracing.served
def handle(request: flask.Request, services: Services) -> flask.Response:
    """Answer one request, with CORS headers for an allowed browser origin."""
    origin = cors_origin(request.headers.get("Origin"), services.settings)
    try:
        if request.method == "OPTIONS" and origin is not None:
            response = _preflight(request.path.rstrip("/") or "/")
        else:
            response = _dispatch(request, services)
    finally:
        finish_body(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Idempotent-Replayed"
        response.headers["Vary"] = "Origin"
    return response


def _preflight(path: str) -> flask.Response:
    """A CORS preflight: the methods this path serves, or 404 for a path it does not."""
    methods = sorted(set(ROUTES.bind("kiln", url_scheme="http").allowed_methods(path)) - {"HEAD"})
    if not methods:
        return error_response(404, "not_found", f"No such endpoint: {path}")
    return flask.Response(status=204, headers={
        "Access-Control-Allow-Methods": ", ".join([*methods, "OPTIONS"]),
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key",
        "Access-Control-Max-Age": "3600",
    })


def _dispatch(request: flask.Request, services: Services) -> flask.Response:
    """Route one request; every error becomes ``{error: {code, message}}``."""
    path = request.path.rstrip("/") or "/"
    try:
        handler, args = ROUTES.bind("kiln", url_scheme="http").match(path, method=request.method)
        return handler(request, services, **args)  # type: ignore[no-any-return]
    except NotFound:
        return error_response(404, "not_found", f"No such endpoint: {path}")
    except MethodNotAllowed as exc:
        allowed = sorted(set(exc.valid_methods or ()))
        return error_response(405, "method_not_allowed",
                              f"Use {' or '.join(allowed)} for this endpoint.",
                              {"Allow": ", ".join(allowed)})
    except HTTPException as exc:  # anything else werkzeug refuses (its router included)
        return framework.http_exception(exc)
    except RequestError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except LimitError as exc:  # admission: nothing was created
        return error_response(503 if isinstance(exc, OverloadedError) else 429,
                              exc.code, exc.message,
                              {"Retry-After": str(max(1, int(exc.retry_after)))})
    except RetryableError as exc:
        log.event(logger, "dependency unavailable", logging.WARNING, code=exc.code)
        return error_response(503, exc.code, "The service is busy; try again shortly.",
                              {"Retry-After": "1"})
    except KilnError as exc:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), None)
        if status is None:
            raise
        return error_response(status, exc.code, exc.message)


def cors_origin(origin: str | None, settings: Any) -> str | None:
    """The origin to allow: listed in ``KILN_CORS_ORIGINS`` (``*`` = any; local default).
    ``*`` never covers the opaque origin ``null`` (sandboxed frames, ``file:`` pages, some
    redirects), which names no site; only an explicit ``null`` in the list allows it."""
    allowed = [o.strip() for o in (settings.cors_origins or ("*" if settings.local else "")).split(",")]
    if not origin or not any(allowed):
        return None
    if origin in allowed:
        return origin
    return origin if "*" in allowed and origin != "null" else None
