"""Batches (pure logic): 1–100 jobs accepted together, counted from the jobs themselves.

A batch is ``batches/{batchId}`` (owner, channel, its job ids, the request's fingerprint)
written in one commit with all of its jobs (two documents each: ≤ 201 writes, under
Firestore's 500). Each job carries ``batchId``; the batch document is never written
again, so no document takes a write per job end: counts come from a query of the jobs by
``batchId``. The same (owner, Idempotency-Key) maps to the same batch id and the same job
ids. When every job has ended, one create-if-absent marker decides who announces it
(``kiln.runtime.batches``). See docs/client-contract.md ("Batches").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.core.errors import ValidationError
from kiln.core.job import JobStatus
from kiln.core.lifecycle import expire_at
from kiln.core.requests import JobRequest, parse_job_request, shown_name

BATCH_MAX = 100
STATUSES = tuple(status.value for status in JobStatus)
TERMINAL = frozenset(status.value for status in JobStatus if status.terminal)


@dataclass(frozen=True)
class Batch:
    """A batch as stored (``batches/{batchId}``)."""

    id: str
    uid: str
    channel: str
    job_ids: tuple[str, ...]
    fingerprint: str
    created_at: dt.datetime | None = None
    tenant: str | None = None
    open: bool = True  # False once its end was announced (``BatchStore.close``)

    @classmethod
    def from_doc(cls, batch_id: str, doc: Mapping[str, Any]) -> Batch:
        return cls(batch_id, str(doc.get("uid", "")), str(doc.get("channel", "")),
                   tuple(doc.get("jobIds") or ()), str(doc.get("fingerprint", "")),
                   doc.get("createdAt"), doc.get("tenant"), doc.get("open") is not False)

    def doc(self) -> dict[str, Any]:
        """The stored document; ``expireAt`` as its jobs' (Firestore's TTL policy)."""
        expire = expire_at(self.created_at) if self.created_at is not None else None
        return {"uid": self.uid, "channel": self.channel, "tenant": self.tenant,
                "jobIds": list(self.job_ids), "count": len(self.job_ids),
                "fingerprint": self.fingerprint, "createdAt": self.created_at,
                "expireAt": expire, "open": True}


def parse_batch_request(body: Any) -> list[JobRequest]:
    """Validate a ``POST /v1/batches`` body: ``{items: [job request, …]}``, 1–100 items.

    Raises:
        ValidationError: ``invalid_body`` / ``invalid_items``, or an item's own refusal
            with its field prefixed ``items[i].`` and the message naming it.
    """
    if not isinstance(body, dict):
        raise ValidationError("invalid_body", "The body must be a JSON object with 'items'.")
    unknown = sorted(shown_name(k) for k in body if k != "items")
    if unknown:
        raise ValidationError("unknown_field", f"Unknown field '{unknown[0]}': a batch "
                              "body has only 'items'.", field=unknown[0])
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_MAX:
        count = f" (got {len(items)})" if isinstance(items, list) else ""
        raise ValidationError("invalid_items", f"'items' must be a list of 1 to {BATCH_MAX} "
                              f"job requests{count}.", field="items")
    requests = []
    for index, item in enumerate(items):
        try:
            requests.append(parse_job_request(item))
        except ValidationError as exc:
            raise item_error(index, exc) from None
    return requests


def item_error(index: int, exc: ValidationError) -> ValidationError:
    """An item's refusal, naming the item: ``items[3].prompt: …``."""
    where = f"items[{index}]" + (f".{exc.field}" if exc.field else "")
    return ValidationError(exc.code or "invalid", f"{where}: {exc.message}", field=where)


def new_batch_id(uid: str, idempotency_key: str | None) -> str:
    """Random, or derived from (owner, key) so a replay maps to the same batch."""
    if idempotency_key is None:
        return secrets.token_hex(10)
    return hashlib.sha256(f"batch\x00{uid}\x00{idempotency_key}".encode()).hexdigest()[:20]


def item_job_id(batch_id: str, index: int) -> str:
    """The id of a batch's ``index``-th job. Tagged ``item``: untagged, it was the id of the
    job a user whose uid is ``batch_id`` submits with ``Idempotency-Key: index``, so such a
    user could take a batch's id before it is made (a key is printable ASCII, so no key
    reaches this tag). A stored batch keeps the ids it was made with."""
    return hashlib.sha256(f"item\x00{batch_id}\x00{index}".encode()).hexdigest()[:20]


def fingerprint(requests: Sequence[JobRequest]) -> str:
    joined = "\x00".join(request.fingerprint() for request in requests)
    return hashlib.sha256(joined.encode()).hexdigest()


def counts(statuses: Mapping[str, str]) -> dict[str, int]:
    """Jobs per status (every status named, zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    for status in statuses.values():
        out[status] = out.get(status, 0) + 1
    return out


def ended(batch: Batch, statuses: Mapping[str, str]) -> bool:
    """Every job of the batch is terminal."""
    return all(statuses.get(job_id) in TERMINAL for job_id in batch.job_ids)
