"""The signature Kiln sends, checked against the Standard Webhooks reference vector (the
``standardwebhooks`` library's own test: key, id, timestamp, payload → signature)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

from standardwebhooks.webhooks import Webhook

from kiln.webhooks import model
from kiln.webhooks.send import signed_headers

REFERENCE_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REFERENCE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
REFERENCE_TIMESTAMP = 1614265330
REFERENCE_PAYLOAD = b'{"test": 2432232314}'
REFERENCE_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_match_the_reference_vector() -> None:
    """Given the spec's reference key, id, timestamp and payload, when Kiln signs them,
    then the headers carry exactly the reference signature, id and timestamp."""
    when = dt.datetime.fromtimestamp(REFERENCE_TIMESTAMP, dt.UTC)
    headers = signed_headers(REFERENCE_KEY, REFERENCE_ID, when, REFERENCE_PAYLOAD)
    assert headers["webhook-signature"] == REFERENCE_SIGNATURE
    assert headers["webhook-id"] == REFERENCE_ID
    assert headers["webhook-timestamp"] == str(REFERENCE_TIMESTAMP)


def test_the_scheme_is_hmac_sha256_over_id_timestamp_body() -> None:
    """Given a fresh whsec_ secret, when an independent HMAC-SHA256 over
    ``{id}.{timestamp}.{body}`` is computed, then it equals Kiln's signature and the
    library verifies Kiln's headers (a tampered body does not)."""
    secret = model.new_secret()
    raw = base64.b64decode(secret.removeprefix("whsec_"))
    assert secret.startswith("whsec_") and 24 <= len(raw) <= 64
    now = dt.datetime.now(dt.UTC)
    body = b'{"type":"job.completed","data":{"jobId":"j1"}}'
    headers = signed_headers(secret, "msg_1", now, body)
    mac = hmac.new(raw, f"msg_1.{int(now.timestamp())}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    assert Webhook(secret).verify(body, headers)["data"]["jobId"] == "j1"
    try:
        Webhook(secret).verify(body.replace(b"j1", b"j2"), headers)
    except Exception as exc:
        assert type(exc).__name__ == "WebhookVerificationError"
    else:
        raise AssertionError("a tampered body verified")
