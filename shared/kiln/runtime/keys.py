"""API keys at run time: verifying a presented key, and the operator's create/list/revoke.

A verified key record is remembered for at most ``CACHE_SECONDS`` (by key id, on the
services' monotonic clock), so a backend's burst of calls costs one read, and a revoked
key is refused within that time. An unknown key id is never cached: a key created a
moment ago works at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kiln.core.errors import RequestError
from kiln.core.keys import ApiKey, Tenant, new_key, parse_key
from kiln.core.principal import Principal, tenant_uid
from kiln.ports import Clock, KeyStore

#: How long a key found good is trusted without a read (a revocation's worst delay).
CACHE_SECONDS = 5.0


class ApiKeyVerifier:
    """``Bearer kiln_…`` → the tenant's :class:`Principal`, or 401."""

    def __init__(self, store: KeyStore, clock: Clock, cache_seconds: float = CACHE_SECONDS,
                 cache_size: int = 10_000) -> None:
        self.store, self.clock = store, clock
        self.cache_seconds, self.cache_size = cache_seconds, cache_size
        self._cache: dict[str, tuple[ApiKey, Tenant | None, float]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        """The key's principal.

        Raises:
            RequestError: 401 ``invalid_api_key`` (malformed, unknown, wrong secret),
                401 ``api_key_revoked``.
        """
        parsed = parse_key(token)
        if parsed is None:
            raise RequestError(401, "invalid_api_key", "The API key is malformed; it reads "
                               "'kiln_' followed by the key id and its secret.")
        key_id, secret = parsed
        key, tenant = self._record(key_id)
        if key is None or not key.matches(secret):
            raise RequestError(401, "invalid_api_key", "The API key is not valid.")
        if key.revoked:
            raise RequestError(401, "api_key_revoked", "This API key was revoked.")
        return Principal(uid=tenant_uid(key.tenant), channel="api", tenant=key.tenant,
                         scopes=key.scopes, plan=tenant.plan if tenant else None,
                         key_id=key.key_id)

    def _record(self, key_id: str) -> tuple[ApiKey | None, Tenant | None]:
        now = self.clock.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[2] > now:
                return hit[0], hit[1]
        key = self.store.get_key(key_id)
        if key is None:
            return None, None
        tenant = self.store.get_tenant(key.tenant)
        with self._lock:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key_id] = (key, tenant, now + self.cache_seconds)
        return key, tenant


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``secret`` is the whole key, to show once and never store."""

    secret: str
    key: ApiKey


def create_key(store: KeyStore, clock: Clock, *, tenant: str, scopes: list[str],
               name: str = "", plan: str | None = None) -> CreatedKey:
    """Store a new key for ``tenant`` (creating the tenant record when it is new)."""
    secret, record = new_key(tenant, scopes, clock.now(), name=name)
    existing = store.get_tenant(record.tenant)
    if existing is None or (plan is not None and existing.plan != plan):
        base = existing or Tenant(record.tenant)
        store.put_tenant(Tenant(base.tenant, plan if plan is not None else base.plan,
                                base.allow_job_webhooks, dict(base.settings)))
    store.put_key(record)
    return CreatedKey(secret, record)
