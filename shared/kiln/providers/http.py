"""HTTP plumbing the provider adapters share: one JSON client, one error mapping.

Every provider speaks JSON over HTTPS with a bearer key; their failures mean the same
things, so they map the same way (messages are safe to show; the key never appears):

=========================  ===============================================  ==============
HTTP                       Kiln error                                       code
=========================  ===============================================  ==============
401, 403                   PermanentError                                   provider_auth
402                        PermanentError ("out of credits")                provider_credits
429                        RetryableError, ``retry_after`` from the header  provider_rate_limited
404, 410                   PermanentError (the task is gone)                provider_not_found
5xx, timeouts, network     RetryableError                                   provider_unavailable
other 4xx                  PermanentError                                   provider_rejected
=========================  ===============================================  ==============

A provider whose error bodies carry its own codes (Meshy's ``{"type", "code", "message"}``)
reads them by overriding :meth:`JsonApi.error`, which gets the parsed :class:`ErrorBody`.
"""

from __future__ import annotations

import email.utils
import io
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from kiln.core.errors import KilnError, PermanentError, RetryableError
from kiln.paced import Pace, ending_by, paced_transport

SAFE_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CONVERT_PIXELS = 40_000_000


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date), capped at an hour."""
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(3600.0, max(0.0, seconds))


def error_for_status(status: int, label: str, *, detail: str = "",
                     headers: Mapping[str, str] | None = None) -> KilnError:
    """The Kiln error an HTTP failure status from provider ``label`` stands for."""
    if status in (401, 403):
        return PermanentError(f"The {label} rejected this service's credentials.",
                              code="provider_auth")
    if status == 402:
        return PermanentError("The generation service is out of credits.", code="provider_credits")
    if status == 429:
        return RetryableError(f"The {label} is busy (rate limited).",
                              code="provider_rate_limited",
                              retry_after=retry_after_seconds(headers or {}))
    if status in (404, 410):
        return PermanentError(f"The {label} does not know this task (it may have expired).",
                              code="provider_not_found")
    if status >= 500 or status == 408:
        return RetryableError(f"The {label} is unavailable right now.",
                              code="provider_unavailable")
    suffix = f": {detail}" if detail else "."
    return PermanentError(f"The {label} rejected the request{suffix}", code="provider_rejected")


@dataclass(frozen=True)
class ErrorBody:
    """A provider's explanation of a failed call: ``message`` (trimmed, safe to show), and
    its ``code`` and ``type`` when it names them (``""`` when not)."""

    message: str = ""
    code: str = ""
    type: str = ""


def short(text: Any, limit: int = 300) -> str:
    """A provider's text, trimmed to one line of at most ``limit`` characters, without
    control characters (an ESC or OSC sequence would drive an operator's terminal, and
    means nothing to a user's app or chat)."""
    flat = " ".join(str(text or "").translate(_CONTROLS).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


#: C0, DEL and C1 control characters: spaces (then folded with the rest).
_CONTROLS = {code: " " for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))}


def shown(text: Any, secret: str, limit: int = 300) -> str:
    """A provider's text fit for a user's message: ``secret`` replaced before it is trimmed
    (a key cut at the limit would survive in part), on one line (:func:`short`)."""
    flat = str(text or "")
    return short(flat.replace(secret, "***") if secret else flat, limit)


def percent(value: Any) -> int:
    """A provider's progress as 0–100: a finite number, clamped; anything else (a string,
    NaN, an infinity, which ``json`` reads) is 0, never an error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, min(100, int(value)))


class JsonApi:
    """A provider's JSON API: base URL, bearer key, timeouts, errors mapped.

    Args:
        base_url: the API root (``https://api.meshy.ai``).
        api_key: sent as ``Authorization: Bearer``; never logged or put in a message.
        label: how messages name the service ("3D generation service").
        client: an ``httpx.Client`` to use instead of a new one (tests).
    """

    def __init__(self, base_url: str, api_key: str, label: str, *, timeout: float = 30.0,
                 connect_timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.timeout = timeout
        self._key = api_key
        self._headers = {"Accept": "application/json"}
        if api_key:  # a team's own task server may need none; never send an empty Bearer
            self._headers["Authorization"] = f"Bearer {api_key}"
        # Paced connections: ``timeout`` bounds the whole call, not each read of it (a
        # server dripping its answer would otherwise hold the delivery past its lease).
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout), trust_env=False,
            transport=paced_transport(Pace(), httpx.create_ssl_context(), trust_env=False,
                                      max_connections=100, max_keepalive_connections=20,
                                      keepalive_expiry=5.0))

    def shown(self, text: Any, limit: int = 300) -> str:
        """A provider's text fit for a user's message: without the key, on one line."""
        return shown(text, self._key, limit)

    def call(self, method: str, path: str, *, json: Any = None,
             headers: Mapping[str, str] | None = None) -> Any:
        """Send one request; the decoded JSON body (None when empty).

        Raises:
            PermanentError / RetryableError: as in the module's table.
        """
        try:
            with ending_by(time.monotonic() + self.timeout):
                response = self._client.request(method, f"{self.base_url}{path}", json=json,
                                                 headers={**self._headers, **(headers or {})})
        except httpx.TimeoutException as exc:
            raise RetryableError(f"The {self.label} did not answer in time.",
                                 code="provider_timeout") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"The {self.label} could not be reached.",
                                 code="provider_unavailable") from exc
        if response.status_code >= 400:
            raise self.error(response.status_code, _error_body(response, self._key),
                             response.headers)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise RetryableError(f"The {self.label} sent an unreadable answer.",
                                 code="provider_unavailable") from exc

    def error(self, status: int, body: ErrorBody, headers: Mapping[str, str]) -> KilnError:
        """The Kiln error a failed call stands for (the module's table); a provider whose
        bodies carry codes overrides this to read them, then falls back to it."""
        return error_for_status(status, self.label, detail=body.message, headers=headers)

    def close(self) -> None:
        self._client.close()


def _error_body(response: httpx.Response, key: str) -> ErrorBody:
    """The provider's own explanation of a failed call, when it gives one: the fields of
    ``{"error": {...}}`` or of the body itself; ``key`` never appears in it."""
    try:
        body = response.json()
    except ValueError:
        return ErrorBody()
    if not isinstance(body, dict):
        return ErrorBody()
    error = body.get("error")
    fields = error if isinstance(error, dict) else body
    message = shown(fields.get("message") or (error if isinstance(error, str) else ""), key)

    def name(value: Any) -> str:
        return value if isinstance(value, str) and SAFE_CODE.match(value) else ""

    return ErrorBody(message=message, code=name(fields.get("code")), type=name(fields.get("type")))


def as_png(data: bytes, what: str = "image") -> bytes:
    """``data`` as PNG: returned as is when it already is one, else decoded and re-encoded.

    Raises:
        PermanentError: ``invalid_artifact`` when the bytes are no image Pillow can read.
    """
    if data.startswith(PNG_SIGNATURE):
        return data
    from PIL import Image  # here: the ingress imports this module (URL rules), never Pillow

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "WEBP", "PNG", "GIF"]) as image:
            if image.width * image.height > MAX_CONVERT_PIXELS:
                raise PermanentError(f"The {what} has too many pixels.", code="artifact_too_large")
            image.load()
            converted = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PermanentError(f"The provider's {what} could not be read.",
                             code="invalid_artifact") from exc
    out = io.BytesIO()
    converted.save(out, format="PNG")
    return out.getvalue()
