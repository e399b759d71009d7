"""The one authentication step of the HTTP API: two verifiers, one :class:`Principal`.

``Authorization: Bearer kiln_…`` is an API key (``kiln.runtime.keys``): the caller is
the tenant's backend, uid ``api:<tenant>``, channel ``api``, the key's scopes, the
tenant's plan. Any other bearer token is a Firebase ID token (``Services.auth``): an app
user, every scope, the plan from the custom claim ``plan``. Then the route's scope is
checked. 401 for a missing, malformed, unknown or revoked credential; 403 for a scope
the key lacks. The key itself never appears in an answer or a log.
"""

from __future__ import annotations

import flask

from kiln.compose import Services
from kiln.core.errors import RequestError
from kiln.core.identity import check_app_uid
from kiln.core.keys import looks_like_key
from kiln.core.principal import ALL_SCOPES, Principal


def authenticate(request: flask.Request, services: Services, scope: str) -> Principal:
    """The caller of ``request``, allowed ``scope``.

    Raises:
        RequestError: 401 (``unauthenticated``, ``invalid_api_key``, ``api_key_revoked``,
            or the ID token's own codes); 403 ``insufficient_scope`` or the app uid's
            refusals (``kiln.core.identity``).
    """
    header = request.headers.get("Authorization")
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if not header:
        raise RequestError(401, "unauthenticated", "Sign in first: missing Authorization header.")
    if scheme.lower() != "bearer" or not token:
        raise RequestError(401, "unauthenticated",
                           "Authorization must be 'Bearer <ID token or API key>'.")
    if looks_like_key(token):
        principal: Principal = services.api_keys.verify(token)
    else:
        uid, plan = services.auth.verify_user(header)
        principal = Principal(uid=check_app_uid(uid), channel="app", tenant=None,
                              scopes=ALL_SCOPES, plan=plan)
    if not principal.allows(scope):
        raise RequestError(403, "insufficient_scope",
                           f"This API key does not have the '{scope}' scope.")
    return principal
