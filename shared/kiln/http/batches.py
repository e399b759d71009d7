"""The batch endpoints of the HTTP API (routed in ``kiln.http.api``):
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}:cancel``."""

from __future__ import annotations

from collections.abc import Callable

import flask

from kiln.compose import Services
from kiln.core.batches import parse_batch_request
from kiln.http.auth import authenticate
from kiln.http.responses import json_response, read_json, refuse_oversized
from kiln.runtime import batches

#: A batch body: up to 100 job requests (each ≤ 64 KiB alone, far less in practice).
BATCH_MAX_BYTES = 1024 * 1024


def create_batch(request: flask.Request, services: Services,
                 idempotency_key: Callable[[], str | None]) -> flask.Response:
    refuse_oversized(request, request.content_length, BATCH_MAX_BYTES)  # before auth
    principal = authenticate(request, services, "submit")
    key = idempotency_key()
    requests = parse_batch_request(read_json(request, BATCH_MAX_BYTES))
    accepted = batches.accept_batch(services, principal=principal, requests=requests,
                                    idempotency_key=key)
    headers = {} if accepted.created else {"Idempotent-Replayed": "true"}
    return json_response(202, {"batchId": accepted.batch_id,
                               "jobIds": list(accepted.job_ids)}, headers)


def get_batch(request: flask.Request, services: Services, batch_id: str) -> flask.Response:
    principal = authenticate(request, services, "read")
    batch = batches.owned_batch(services, principal, batch_id)
    return json_response(200, batches.view(services, batch))


def cancel_batch(request: flask.Request, services: Services, batch_id: str) -> flask.Response:
    principal = authenticate(request, services, "cancel")
    batch = batches.owned_batch(services, principal, batch_id)
    canceled = batches.cancel(services, batch)
    return json_response(200, {"batchId": batch.id, "canceled": canceled,
                               "counts": batches.view(services, batch)["counts"]})
