"""Firestore adapter of ``kiln.ports.KeyStore``: ``apiKeys/{keyId}`` (the secret's hash,
never the secret) and ``tenants/{tenant}``. Both are server-only: the rules deny every
client (infra/firestore.rules)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.cloud import firestore

from kiln.adapters.firestore import unavailable_is_retryable
from kiln.core.keys import ApiKey, Tenant

KEYS = "apiKeys"
TENANTS = "tenants"


def _key_from(key_id: str, doc: dict[str, Any]) -> ApiKey:
    return ApiKey(key_id=key_id, tenant=str(doc.get("tenant", "")),
                  scopes=frozenset(doc.get("scopes") or ()),
                  secret_hash=str(doc.get("secretHash", "")), created_at=doc["createdAt"],
                  revoked_at=doc.get("revokedAt"), name=str(doc.get("name") or ""))


class FirestoreKeyStore:
    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def put_key(self, key: ApiKey) -> None:
        with unavailable_is_retryable("key store"):
            self.client.collection(KEYS).document(key.key_id).create({
                "tenant": key.tenant, "scopes": sorted(key.scopes), "secretHash": key.secret_hash,
                "prefix": key.prefix, "name": key.name, "createdAt": key.created_at,
                "revokedAt": key.revoked_at})

    def get_key(self, key_id: str) -> ApiKey | None:
        with unavailable_is_retryable("key store"):
            snap = self.client.collection(KEYS).document(key_id).get()
        return _key_from(snap.id, snap.to_dict() or {}) if snap.exists else None

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query: Any = self.client.collection(KEYS)
        if tenant is not None:
            query = query.where(filter=firestore.FieldFilter("tenant", "==", tenant))
        with unavailable_is_retryable("key store"):
            return [_key_from(snap.id, snap.to_dict() or {}) for snap in query.stream()]

    def revoke_key(self, key_id: str, at: dt.datetime) -> bool:
        ref = self.client.collection(KEYS).document(key_id)
        with unavailable_is_retryable("key store"):
            if not ref.get().exists:
                return False
            ref.update({"revokedAt": at})
        return True

    def get_tenant(self, tenant: str) -> Tenant | None:
        with unavailable_is_retryable("key store"):
            snap = self.client.collection(TENANTS).document(tenant).get()
        if not snap.exists:
            return None
        doc = snap.to_dict() or {}
        return Tenant(tenant, doc.get("plan"), bool(doc.get("allowJobWebhooks")),
                      dict(doc.get("settings") or {}))

    def put_tenant(self, tenant: Tenant) -> None:
        with unavailable_is_retryable("key store"):
            self.client.collection(TENANTS).document(tenant.tenant).set({
                "plan": tenant.plan, "allowJobWebhooks": tenant.allow_job_webhooks,
                "settings": dict(tenant.settings)}, merge=True)
