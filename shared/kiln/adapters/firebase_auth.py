"""Caller authentication for the HTTP API: Firebase ID tokens, verified by firebase-admin.

Unsigned emulator tokens are accepted only when ``FIREBASE_AUTH_EMULATOR_HOST`` is set,
which ``Settings`` refuses outside ``KILN_ENV=local``: a deployed function always checks
Google's signatures.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import firebase_admin
import google.oauth2.credentials
from firebase_admin import auth as fb_auth
from firebase_admin import credentials as fb_credentials

from kiln.core.errors import RequestError, RetryableError
from kiln.settings import Settings


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise RequestError(401, "unauthenticated", "Sign in first: missing Authorization header.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(401, "unauthenticated", "Authorization must be 'Bearer <ID token>'.")
    return token.strip()


class _LocalCredential(fb_credentials.Base):
    """A fixed bearer token for the local FCM server: there is no Google to ask."""

    def get_credential(self) -> Any:
        return google.oauth2.credentials.Credentials(token="kiln-local-token")


def firebase_app(settings: Settings) -> firebase_admin.App:
    """A firebase_admin app of its own for one ``Services`` (local: a fixed credential)."""
    cred: fb_credentials.Base
    cred = _LocalCredential() if settings.local else fb_credentials.ApplicationDefault()
    # Unique for the life of the process: firebase_admin keeps every app registered by
    # name, and an object's id() comes back once the object is collected.
    return firebase_admin.initialize_app(cred, {"projectId": settings.project},
                                         name=f"kiln-{uuid.uuid4().hex}")


class FirebaseAuth:
    """Verifies Firebase ID tokens; returns the caller's uid."""

    def __init__(self, app: firebase_admin.App) -> None:
        self.app = app

    def verify(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        try:
            claims = fb_auth.verify_id_token(token, app=self.app)
        except fb_auth.CertificateFetchError as exc:
            raise RetryableError("Token keys are unavailable.", code="auth_unavailable") from exc
        except (ValueError, fb_auth.InvalidIdTokenError, fb_auth.ExpiredIdTokenError,
                fb_auth.RevokedIdTokenError, fb_auth.UserDisabledError) as exc:
            raise RequestError(401, "unauthenticated", "The ID token is invalid or expired.") from exc
        uid = claims.get("uid") or claims.get("sub")
        if not isinstance(uid, str) or not uid:
            raise RequestError(401, "unauthenticated", "The ID token has no user.")
        return uid


def emulator_id_token(uid: str, project: str, *, lifetime: int = 3600, **claims: Any) -> str:
    """An unsigned ID token (``alg: none``) as the Firebase Auth emulator issues them.

    Only accepted by a Kiln running with ``KILN_ENV=local``.
    """
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT"}
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "auth_time": now,
        "iat": now,
        "exp": now + lifetime,
        "sub": uid,
        "user_id": uid,
        "firebase": {"identities": {}, "sign_in_provider": "custom"},
        **claims,
    }

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."
