"""The batch endpoints of the OpenAPI document (``kiln_dev.schema`` merges them in)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def batch_paths(json_body: Callable[[str, str], dict[str, Any]],
                errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    batch_id = {"name": "batchId", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}}
    return {
        "/v1/batches": {"post": {
            "operationId": "createBatch", "summary": "Accept 1–100 jobs together (all or none)",
            "description": "The batch and all its jobs are written in one commit, then "
            "published; one acknowledgement. An item that would be refused alone refuses the "
            "whole batch with 400, its message naming the item (items[3].prompt: …), and "
            "nothing is created. Each job carries batchId. When every job has ended: one "
            "batch.completed webhook event (API keys) or one push (app users; the batch's "
            "jobs send none of their own).",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "description": "The same key (per caller) always maps to the "
                            "same batch and job ids: a retried request returns them with "
                            "header Idempotent-Replayed: true.",
                            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/CreateBatchRequest"},
                "example": {"items": [{"kind": "image", "prompt": "a red fox"},
                                      {"kind": "image", "prompt": "a blue fox"}]}}}},
            "responses": {"202": json_body("CreateBatchResponse", "Accepted."),
                          **errors(400, 401, 403, 413, 415, 422, 431, 503)},
        }},
        "/v1/batches/{batchId}": {"get": {
            "operationId": "getBatch", "summary": "A batch's counts per status (owner only)",
            "parameters": [batch_id],
            "responses": {"200": json_body("BatchView", "The batch, counted from its jobs."),
                          **errors(401, 403, 404, 503)},
        }},
        "/v1/batches/{batchId}:cancel": {"post": {
            "operationId": "cancelBatch", "summary": "Cancel every job of the batch not yet "
            "ended (idempotent)", "parameters": [batch_id],
            "responses": {"200": json_body("CancelBatchResponse", "Canceled."),
                          **errors(401, 403, 404, 503)},
        }},
    }
