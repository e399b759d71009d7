"""Caller authentication for the HTTP API: Firebase ID tokens, verified by firebase-admin.

Unsigned emulator tokens are accepted only when ``FIREBASE_AUTH_EMULATOR_HOST`` is set,
which ``Settings`` refuses outside ``KILN_ENV=local``: a deployed function always checks
Google's signatures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import firebase_admin
import google.oauth2.credentials
from firebase_admin import auth as fb_auth
from firebase_admin import credentials as fb_credentials
from firebase_admin import exceptions as firebase_exceptions

from kiln import log
from kiln.core.errors import RequestError, RetryableError
from kiln.ports import Identity
from kiln.settings import Settings


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise RequestError(401, "unauthenticated", "Sign in first: missing Authorization header.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(401, "unauthenticated", "Authorization must be 'Bearer <ID token>'.")
    return token.strip()


logger = log.get("auth")
#: Seconds each of firebase-admin's HTTP calls may take (its default is 120).
HTTP_TIMEOUT = 10.0

class _LocalCredential(fb_credentials.Base):
    """A fixed bearer token for the local FCM server: there is no Google to ask."""

    def get_credential(self) -> Any:
        return google.oauth2.credentials.Credentials(token="kiln-local-token")


def firebase_app(settings: Settings) -> firebase_admin.App:
    """A firebase_admin app of its own for one ``Services`` (local: a fixed credential)."""
    cred: fb_credentials.Base
    cred = _LocalCredential() if settings.local else fb_credentials.ApplicationDefault()
    # Unique for the life of the process: firebase_admin keeps every app registered by
    # name, and an object's id() comes back once the object is collected. Its HTTP calls
    # (the user lookup, the token keys, FCM) time out after HTTP_TIMEOUT, not
    # firebase-admin's default 120 s: longer than a request's or a sweep's time.
    return firebase_admin.initialize_app(
        cred, {"projectId": settings.project, "httpTimeout": HTTP_TIMEOUT},
        name=f"kiln-{uuid.uuid4().hex}")


class FirebaseAuth:
    """Verifies Firebase ID tokens; returns the caller's uid.

    With ``check_revoked`` (deployed), firebase-admin also asks Firebase Auth whether the
    user was disabled or their sessions revoked (``verify_id_token(check_revoked=True)``,
    one user lookup). A token found good is remembered for ``cache_seconds`` (never past
    its expiry), so a client's repeated calls with one token cost no lookup and the
    acknowledgement stays fast; a revocation or a disabled account takes effect within
    that time.

    The caller's plan is the custom claim ``plan``, trusted only from a signed token
    (``trust_claims``): on the local stack tokens are unsigned, anyone can write any
    claim, so there the claim is ignored (the plan comes from ``KILN_PLAN_GRANTS``).
    """

    def __init__(self, app: firebase_admin.App, *, check_revoked: bool = True,
                 trust_claims: bool = True, cache_seconds: float = 60.0,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.check_revoked = check_revoked
        self.trust_claims = trust_claims
        self.cache_seconds, self.cache_size, self._clock = cache_seconds, cache_size, clock
        # digest → the caller, until
        self._good: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, authorization: str | None) -> str:
        return self.identify(authorization).uid

    def verify_user(self, authorization: str | None) -> tuple[str, str | None]:
        """The caller's uid and plan (the custom claim ``plan``, from a trusted token;
        None when unset or untrusted)."""
        identity = self.identify(authorization)
        return identity.uid, identity.plan

    def identify(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        key, now = hashlib.sha256(token.encode()).digest(), self._clock()
        with self._lock:
            hit = self._good.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        claims = self._verified(token)
        uid = claims.get("uid") or claims.get("sub")
        if not isinstance(uid, str) or not uid:
            raise RequestError(401, "unauthenticated", "The ID token has no user.")
        expires = claims.get("exp")
        until = now + self.cache_seconds
        if isinstance(expires, (int, float)):
            until = min(until, float(expires))
        plan = claims.get("plan") if self.trust_claims else None
        identity = Identity(uid, plan if isinstance(plan, str) and plan else None)
        with self._lock:
            self._good[key] = (identity, until)
            self._good.move_to_end(key)
            while len(self._good) > self.cache_size:
                self._good.popitem(last=False)
        return identity

    def _verified(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = fb_auth.verify_id_token(token, app=self.app,
                                                             check_revoked=self.check_revoked)
        except fb_auth.CertificateFetchError as exc:
            raise RetryableError("Token keys are unavailable.", code="auth_unavailable") from exc
        except fb_auth.RevokedIdTokenError as exc:
            raise RequestError(401, "token_revoked",
                               "This sign-in was revoked; sign in again.") from exc
        except fb_auth.UserDisabledError as exc:
            raise RequestError(403, "user_disabled", "This account is disabled.") from exc
        except fb_auth.UserNotFoundError as exc:
            raise RequestError(401, "unauthenticated",
                               "The ID token's user no longer exists.") from exc
        except (ValueError, fb_auth.InvalidIdTokenError) as exc:
            raise RequestError(401, "unauthenticated", "The ID token is invalid or expired "
                               "(an API key reads kiln_<keyId>_<secret>).") from exc
        except firebase_exceptions.PermissionDeniedError as exc:  # a deployment's mistake
            log.event(logger, "Firebase Auth refused the user lookup: the ingress's account "
                      "needs roles/firebaseauth.viewer", logging.ERROR)
            raise RetryableError("Firebase Auth is unavailable.", code="auth_unavailable") from exc
        except firebase_exceptions.FirebaseError as exc:  # the user lookup: Auth is unreachable
            raise RetryableError("Firebase Auth is unavailable.", code="auth_unavailable") from exc
        return claims


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
