"""Provider callbacks: verify one request and read the task events in it.

A callback only says "look at this task now"; the job's next check polls the provider,
and the poll is the truth (``docs/providers.md``, "Callbacks"). So an event carries no
state beyond what is needed to find the task and to tell an end from progress.

- ``taskserver``: Kiln's task protocol (``docs/taskserver-protocol.md``, "Callbacks"),
  signed with Standard Webhooks (``webhook-id`` / ``webhook-timestamp`` /
  ``webhook-signature``, secret ``KILN_TASKSERVER_WEBHOOK_SECRET``); ``webhook-id`` is the
  event id; the timestamp must be within 5 minutes of ``now``.
- ``meshy``: the task object Meshy posts for every API task update. Meshy's docs name no
  signature header, so the URL configured in Meshy's dashboard carries a shared secret as
  ``?token=`` (``KILN_MESHY_WEBHOOK_SECRET``; several, comma-separated, while one is
  rotated), compared in constant time. The event id is
  ``{task id}:{status}:{progress}`` (Meshy sends none; a repeat of the same update is a
  replay).

Refusals are :class:`CallbackRefused` subclasses that carry their HTTP status; their
messages never contain a secret.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook

from kiln.core.errors import RequestError
from kiln.settings import Settings

PROVIDERS = ("taskserver", "meshy")
#: The longest task or event id a callback may name (UTF-8 bytes).
ID_MAX_BYTES = 256
TOLERANCE = dt.timedelta(minutes=5)
#: Meshy's stage prefixes on Kiln's task ids (``kiln.providers.meshy``).
_MESHY_STAGES = ("text", "image", "preview", "refine", "mesh")
_TASKSERVER_ENDED = frozenset({"succeeded", "failed", "canceled"})
_MESHY_ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "EXPIRED"})


@dataclass(frozen=True)
class ProviderEvent:
    """One task update: its dedupe id, the task (as the provider names it), whether the
    task ended, and the provider's kind of update."""

    event_id: str
    task_id: str
    ended: bool
    kind: str


class CallbackRefused(RequestError):
    """A callback Kiln will not act on; ``status`` is the HTTP answer."""

    status_code = 400
    default_code = "callback_refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(self.status_code, code or self.default_code, message)


class CallbacksNotConfigured(CallbackRefused):
    """Unknown provider, or its callbacks are not configured here (404)."""

    status_code = 404
    default_code = "not_found"


class CallbackUnauthenticated(CallbackRefused):
    """Bad signature or secret, missing headers, or a stale timestamp (401)."""

    status_code = 401
    default_code = "unauthenticated"


class MalformedCallback(CallbackRefused):
    """The body is not an event this provider sends (400)."""

    status_code = 400
    default_code = "invalid_event"


def task_key(provider: str, task_id: str) -> str:
    """The id a task is indexed under: what the provider's callbacks name it by.

    Kiln's Meshy task ids carry the stage (``refine:<id>``); Meshy calls back with the
    bare id. Other providers call back with the id Kiln holds.
    """
    if provider == "meshy":
        stage, sep, remote = task_id.partition(":")
        if sep and stage in _MESHY_STAGES and remote:
            return remote
    return task_id


def callback_url(settings: Settings, provider: str) -> str:
    """Where ``provider`` should send callbacks ("" when ``KILN_PUBLIC_URL`` is unset)."""
    if not settings.public_url:
        return ""
    return f"{settings.public_url.rstrip('/')}/v1/providers/{provider}/events"


def verify(provider: str, headers: Mapping[str, str], body: bytes, settings: Settings,
           now: dt.datetime, *, query: Mapping[str, str] | None = None) -> list[ProviderEvent]:
    """Authenticate one callback request and return its events.

    Raises:
        CallbacksNotConfigured: unknown provider, or its secret is unset (404).
        CallbackUnauthenticated: the signature, secret or timestamp does not hold (401).
        MalformedCallback: the body is not JSON of the provider's shape (400).
    """
    if provider == "taskserver":
        return _taskserver(headers, body, settings.taskserver_webhook_secret, now)
    if provider == "meshy":
        return _meshy(body, settings.meshy_webhook_secret, query or {})
    raise CallbacksNotConfigured("No such provider takes callbacks here.")


# --- taskserver: Standard Webhooks -------------------------------------------------------


def _taskserver(headers: Mapping[str, str], body: bytes, secret: str,
                now: dt.datetime) -> list[ProviderEvent]:
    if not secret:
        raise CallbacksNotConfigured("Callbacks from this provider are not configured.")
    try:
        webhook = Webhook(secret)
    except Exception as exc:  # a malformed secret is a deployment problem, not the caller's
        raise CallbacksNotConfigured("Callbacks from this provider are not configured.") from exc
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise CallbackUnauthenticated("The Standard Webhooks headers are missing.")
    try:
        sent = dt.datetime.fromtimestamp(int(stamp), tz=dt.UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise CallbackUnauthenticated("The webhook timestamp is not valid.") from exc
    if abs(now - sent) > TOLERANCE:
        raise CallbackUnauthenticated("The webhook timestamp is too far from now.",
                                      code="stale_timestamp")
    # The library signs; the comparison is here so the tolerance is judged against `now`
    # (the library's own verify reads the wall clock).
    expected = webhook.sign(msg_id, sent, body).encode()
    if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split(" ")):
        raise CallbackUnauthenticated("The webhook signature does not match.",
                                      code="bad_signature")
    event = _json_object(body)
    task_id, status = event.get("task_id"), event.get("status")
    if not isinstance(task_id, str) or not task_id or not isinstance(status, str):
        raise MalformedCallback("The event needs a task_id and a status.")
    _check_id(msg_id, "webhook-id")
    _check_id(task_id, "task_id")
    kind = event.get("type")
    return [ProviderEvent(event_id=msg_id, task_id=task_id, ended=status in _TASKSERVER_ENDED,
                          kind=kind if isinstance(kind, str) and kind else f"task.{status}")]


# --- meshy: the task object, a shared secret in the URL ----------------------------------


def _meshy(body: bytes, secret: str, query: Mapping[str, str]) -> list[ProviderEvent]:
    # Comma-separated: during a rotation both webhooks' tokens are taken.
    tokens = [each.strip() for each in secret.split(",") if each.strip()]
    if not tokens:
        raise CallbacksNotConfigured("Callbacks from this provider are not configured.")
    given = query.get("token", "").encode()
    if not any([hmac.compare_digest(given, token.encode()) for token in tokens]):  # all compared
        raise CallbackUnauthenticated("The webhook token does not match.", code="bad_token")
    task = _json_object(body)
    task_id, status = task.get("id"), task.get("status")
    if not isinstance(task_id, str) or not task_id or not isinstance(status, str):
        raise MalformedCallback("The event needs an id and a status.")
    _check_id(task_id, "id")
    progress = task.get("progress")
    progress = max(0, min(100, progress)) if isinstance(progress, int) else 0  # (in the key)
    return [ProviderEvent(event_id=f"{task_id}:{status}:{progress}", task_id=task_id,
                          ended=status in _MESHY_ENDED, kind=status.lower())]


def _check_id(value: str, name: str) -> None:
    """A task or event id Kiln can index: printable, at most :data:`ID_MAX_BYTES` bytes of
    UTF-8 (a Firestore document id holds at most 1,500, and Kiln's keys quote it)."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedCallback(f"The event's {name} is not valid Unicode.") from None
    if size > ID_MAX_BYTES or not value.isprintable():
        raise MalformedCallback(
            f"The event's {name} must be printable and at most {ID_MAX_BYTES} bytes.")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedCallback("The body is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise MalformedCallback("The body must be a JSON object.")
    return value
