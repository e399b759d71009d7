"""Who is calling the HTTP API (pure data): the one result of authentication.

``kiln.http.auth.authenticate`` yields a :class:`Principal` for either kind of caller:
an app user (a Firebase ID token) or a backend (an API key bound to a tenant). Every
route asks for one scope; an app user holds them all, a key only those it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What an API key may be allowed to do: submit jobs and batches, read them, cancel them.
SCOPES = ("submit", "read", "cancel")
ALL_SCOPES = frozenset(SCOPES)
#: The owner of a tenant's jobs (``kiln.core.identity`` reserves the prefix).
API_UID_PREFIX = "api:"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``uid`` owns the jobs it creates (a Firebase uid, or ``api:<tenant>``); ``channel`` is
    ``app`` or ``api``; ``tenant`` is set for API keys only; ``plan`` comes from the
    Firebase custom claim ``plan`` or from the tenant record.
    """

    uid: str
    channel: str
    tenant: str | None
    scopes: frozenset[str]
    plan: str | None = None
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def tenant_uid(tenant: str) -> str:
    """The uid that owns a tenant's jobs."""
    return f"{API_UID_PREFIX}{tenant}"
