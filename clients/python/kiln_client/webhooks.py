"""Verifying Kiln's webhooks (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``; a ``whsec_`` secret), with the ``standardwebhooks`` library, which
compares signatures in constant time."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryError

from kiln_client.errors import WebhookVerificationError
from kiln_client.models import WebhookEvent

#: The spec's tolerance: a timestamp further than this from now is refused (replays).
TOLERANCE_SECONDS = 300


def verify_webhook(payload: bytes | str, headers: Mapping[str, str], secret: str, *,
                   tolerance: float = TOLERANCE_SECONDS) -> WebhookEvent:
    """The event in a webhook request, once its signature and timestamp check out.

    ``payload`` is the raw body exactly as received; ``headers`` the request's (any case);
    ``secret`` the endpoint's ``whsec_…`` secret. ``tolerance`` may only tighten the
    library's 5 minutes.

    Raises:
        WebhookVerificationError: a header is missing, the timestamp is outside the
            tolerance, or no signature matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ts = lowered.get("webhook-timestamp", "")
    try:
        stamp = int(raw_ts)
    except ValueError:
        raise WebhookVerificationError("missing or invalid webhook-timestamp") from None
    if abs(time.time() - stamp) > min(tolerance, TOLERANCE_SECONDS):
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    _check_secret(secret)
    try:
        body: Any = Webhook(secret).verify(payload, lowered)
    except _LibraryError as exc:
        raise WebhookVerificationError(str(exc)) from None
    except (ValueError, TypeError) as exc:  # an unreadable body
        raise WebhookVerificationError(f"cannot verify: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return WebhookEvent(id=lowered["webhook-id"], type=str(body.get("type", "")),
                        timestamp=str(body.get("timestamp", "")),
                        data=dict(body.get("data") or {}))



def _check_secret(secret: object) -> None:
    """A secret the library can use: a ``whsec_`` key of at least one byte, read as the
    library reads it (characters that are not base64, a trailing newline included, are
    skipped; padding is optional), whose empty key would raise an error of its own."""
    key = secret.removeprefix("whsec_") if isinstance(secret, str) else ""
    try:
        ok = bool(base64.b64decode(key + "=="))
    except (ValueError, binascii.Error):
        ok = False
    if not ok:
        raise WebhookVerificationError(
            "the webhook secret is missing or not a whsec_… secret: copy the endpoint's secret")
