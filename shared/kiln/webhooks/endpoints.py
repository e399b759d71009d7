"""Where a tenant's events go: registered endpoints, and per-job webhook URLs.

Shared by the operator commands (``kiln webhooks …``, ``kiln.ops.webhooks``) and the HTTP
API (``/v1/webhooks…``, ``kiln.http.webhooks``). A registered endpoint gets a ``whsec_``
secret of its own, returned once when it is created and stored server-side only. A job's
own ``webhook`` URL needs the tenant's ``allowJobWebhooks`` setting; its deliveries are
signed with the tenant's job-webhook secret. Every URL passes the fetch rules
(``kiln.webhooks.send.check_webhook_url``): at registration with a DNS lookup, at submit
without one (the acknowledgement stays fast), and again at every delivery attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kiln.core import urls
from kiln.core.errors import PermanentError, RequestError, RetryableError, ValidationError
from kiln.providers.fetch import Resolver, system_resolve
from kiln.webhooks import model, send
from kiln.webhooks.model import Endpoint

MAX_ENDPOINTS = 10


def register(services: Any, tenant: str, url: Any, events: Iterable[str] = (), *,
             resolve: Resolver = system_resolve) -> Endpoint:
    """A new endpoint for ``tenant`` (its secret is in the result: show it once).

    Raises:
        ValidationError: ``invalid_webhook_url`` (not https, private, loopback, metadata…),
            ``invalid_events``, ``too_many_endpoints``.
    """
    if not isinstance(url, str) or not url:
        raise ValidationError("invalid_webhook_url", "'url' must be an https URL.", field="url")
    chosen = tuple(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in model.EVENT_TYPES]
    if unknown:
        raise ValidationError("invalid_events", f"Unknown event type {unknown[0][:40]!r}; use any of "
                              f"{', '.join(model.EVENT_TYPES)}.", field="events")
    try:
        send.check_webhook_url(url, allow_local=services.settings.local, resolve=resolve)
    except PermanentError as exc:
        raise ValidationError("invalid_webhook_url", exc.message, field="url") from exc
    except RetryableError as exc:  # its DNS failed for now: the caller's to fix or retry
        raise ValidationError("invalid_webhook_url", "The URL's host could not be resolved "
                              "just now; check it and register it again.", field="url") from exc
    endpoint = Endpoint(model.new_endpoint_id(), tenant, url, model.new_secret(), chosen,
                        created_at=services.clock.now())
    if not services.webhooks.put_endpoint(endpoint, limit=MAX_ENDPOINTS):  # counted atomically
        raise ValidationError("too_many_endpoints",
                              f"A tenant may have at most {MAX_ENDPOINTS} webhook endpoints.")
    return endpoint


def remove(services: Any, tenant: str | None, endpoint_id: str) -> bool:
    """Delete an endpoint (of ``tenant`` when given); False when there is none."""
    endpoint = services.webhooks.endpoint(endpoint_id)
    if endpoint is None or (tenant is not None and endpoint.tenant != tenant):
        return False
    return bool(services.webhooks.delete_endpoint(endpoint_id))


def job_secret(services: Any, tenant: str) -> str:
    """The tenant's secret for per-job webhook URLs (made on first use)."""
    return str(services.webhooks.tenant_secret(tenant, model.new_secret()))


def job_webhook(services: Any, principal: Any, body: Any) -> dict[str, Any] | None:
    """Take a job request's ``webhook`` out of ``body``: the server state to record with the
    job (None without one).

    Raises:
        RequestError: 400 ``invalid_webhook_url`` (not a string, or refused without a
            lookup), 403 ``job_webhooks_not_allowed`` (not an API key, or the tenant's
            settings do not allow per-job webhooks).
    """
    if not isinstance(body, dict) or "webhook" not in body:
        return None
    url = body.pop("webhook")
    if url is None:
        return None
    if principal.channel != "api" or not principal.tenant:
        raise RequestError(403, "job_webhooks_not_allowed",
                           "Per-job webhooks are for API keys; apps get a push instead.")
    tenant = services.keys.get_tenant(principal.tenant)
    if tenant is None or not tenant.allow_job_webhooks:
        raise RequestError(403, "job_webhooks_not_allowed",
                           "This tenant's settings do not allow per-job webhook URLs; "
                           "register an endpoint instead.")
    if not isinstance(url, str) or len(url) > 2000:
        raise RequestError(400, "invalid_webhook_url", "'webhook' must be an https URL.")
    why = urls.refusal(url, allow_local=services.settings.local) or send.client_refusal(url)
    if why:
        raise RequestError(400, "invalid_webhook_url", f"The webhook URL was refused: {why}.")
    return {"webhook": url}


def endpoint_view(endpoint: Endpoint, *, with_secret: bool = False) -> Mapping[str, Any]:
    view = endpoint.public_view()
    if with_secret:
        view["secret"] = endpoint.secret
    return view
