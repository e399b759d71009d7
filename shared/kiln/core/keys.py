"""API keys for backends (pure logic): the key format, its hash, the stored records.

A key reads ``kiln_<keyId>_<secret>``: ``keyId`` (12 lowercase hex characters) names the
record ``apiKeys/{keyId}``; ``secret`` is 32 random bytes (URL-safe base64). Only the
SHA-256 of the secret is stored (a high-entropy secret needs no slow hash), compared in
constant time. ``kiln_<keyId>`` is the prefix shown to humans; the secret is printed once,
when the key is created, and never stored, logged or echoed. See docs/client-contract.md
("API keys").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.core.errors import ValidationError
from kiln.core.principal import SCOPES

KEY_PREFIX = "kiln_"
_KEY_ID = "[0-9a-f]{12}"  # a key's id: kiln_<keyId>_<secret>
_KEY = re.compile(rf"^kiln_({_KEY_ID})_([A-Za-z0-9_-]{{43}})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class ApiKey:
    """The stored record of one key (``apiKeys/{keyId}``): never the secret itself."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    secret_hash: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    name: str = ""

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's (constant time)."""
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)


@dataclass(frozen=True)
class Tenant:
    """A backend's record (``tenants/{tenant}``): its plan and webhook settings."""

    tenant: str
    plan: str | None = None
    allow_job_webhooks: bool = False
    settings: dict[str, object] = field(default_factory=dict)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ValidationError("invalid_tenant", "A tenant is 1-63 lowercase letters, digits "
                              "or '-', starting with a letter or digit.", field="tenant")
    return tenant


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise ValidationError("invalid_scopes", f"Scopes are some of {', '.join(SCOPES)}"
                              + (f"; unknown: {', '.join(unknown)}." if unknown else "."),
                              field="scopes")
    return wanted


def new_key(tenant: str, scopes: Iterable[str], now: dt.datetime,
            name: str = "") -> tuple[str, ApiKey]:
    """A fresh key: (the full key to hand over once, its record to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(key_id, check_tenant(tenant), check_scopes(scopes), hash_secret(secret),
                    now, name=name)
    return f"{KEY_PREFIX}{key_id}_{secret}", record


def parse_key(token: str) -> tuple[str, str] | None:
    """``(keyId, secret)`` of a well-formed key, else None."""
    match = _KEY.match(token)
    return (match.group(1), match.group(2)) if match else None


def is_key_id(value: str) -> bool:
    """Whether ``value`` is a key's id as :func:`new_key` makes them."""
    return re.fullmatch(_KEY_ID, value) is not None


def looks_like_key(token: str) -> bool:
    """A bearer token meant as an API key (well-formed or not), not a Firebase ID token."""
    return token.startswith(KEY_PREFIX)
