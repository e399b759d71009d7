"""``/v1/webhooks…``: a backend manages its own webhook endpoints with its API key.

``POST /v1/webhooks {url, events?}`` → 201 with the endpoint and its ``secret`` (shown
only in this answer); ``GET /v1/webhooks`` lists them (never a secret);
``DELETE /v1/webhooks/{endpointId}``; ``GET /v1/webhooks/secret`` is the tenant's secret
for per-job ``webhook`` URLs. Managing needs the ``submit`` scope, reading ``read``.
App users get 403: they are told by push.
"""

from __future__ import annotations

import flask

from kiln.compose import Services
from kiln.core.errors import NotFoundError, RequestError
from kiln.http.auth import authenticate
from kiln.http.responses import json_response, read_json
from kiln.webhooks import endpoints

MAX_BODY = 8 * 1024


def _tenant(request: flask.Request, services: Services, scope: str) -> str:
    principal = authenticate(request, services, scope)
    if principal.channel != "api" or not principal.tenant:
        raise RequestError(403, "api_key_required", "Webhooks are managed with an API key.")
    return principal.tenant


def create_endpoint(request: flask.Request, services: Services) -> flask.Response:
    tenant = _tenant(request, services, "submit")
    body = read_json(request, MAX_BODY)
    if not isinstance(body, dict) or set(body) - {"url", "events"}:
        raise RequestError(400, "invalid_body", "The body must be {\"url\": …, \"events\": […]}.")
    events = body.get("events")
    if events is None:  # absent or null: every event type but job.progress
        events = []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise RequestError(400, "invalid_events", "'events' must be a list of event types.")
    endpoint = endpoints.register(services, tenant, body.get("url"), events)
    return json_response(201, dict(endpoints.endpoint_view(endpoint, with_secret=True)))


def list_endpoints(request: flask.Request, services: Services) -> flask.Response:
    tenant = _tenant(request, services, "read")
    return json_response(200, {"endpoints": [dict(endpoints.endpoint_view(e))
                                             for e in services.webhooks.endpoints(tenant)]})


def delete_endpoint(request: flask.Request, services: Services, endpoint_id: str) -> flask.Response:
    tenant = _tenant(request, services, "submit")
    if not endpoints.remove(services, tenant, endpoint_id):
        raise NotFoundError("No such webhook endpoint.")
    return json_response(200, {"id": endpoint_id, "deleted": True})


def job_secret(request: flask.Request, services: Services) -> flask.Response:
    # The secret signs the tenant's per-job webhooks: a key that may only read could
    # forge them. The scope of registering an endpoint, which returns its secret.
    tenant = _tenant(request, services, "submit")
    return json_response(200, {"secret": endpoints.job_secret(services, tenant)})
