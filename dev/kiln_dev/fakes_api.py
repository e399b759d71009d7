"""In-memory fakes of the ports backends use (``kiln.ports.KeyStore``,
``kiln.ports.BatchStore``), for unit tests; beside ``kiln_dev.fakes``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

from kiln.core.keys import ApiKey, Tenant


class InMemoryKeyStore:
    """``kiln.ports.KeyStore`` in dicts; counts key reads (the verifier's cache)."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.tenants: dict[str, Tenant] = {}
        self.key_reads = 0
        self._lock = threading.Lock()

    def put_key(self, key: ApiKey) -> None:
        with self._lock:
            self.keys[key.key_id] = key

    def get_key(self, key_id: str) -> ApiKey | None:
        with self._lock:
            self.key_reads += 1
            return self.keys.get(key_id)

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        with self._lock:
            return [k for k in self.keys.values() if tenant is None or k.tenant == tenant]

    def revoke_key(self, key_id: str, at: dt.datetime) -> bool:
        with self._lock:
            key = self.keys.get(key_id)
            if key is None:
                return False
            self.keys[key_id] = dataclasses.replace(key, revoked_at=key.revoked_at or at)
            return True

    def get_tenant(self, tenant: str) -> Tenant | None:
        with self._lock:
            return self.tenants.get(tenant)

    def put_tenant(self, tenant: Tenant) -> None:
        with self._lock:
            self.tenants[tenant.tenant] = tenant
