"""Firestore adapter of ``kiln.ports.TaskIndex``: a provider's task → its job
(``providerTasks``), and the callback events already seen (``providerEvents``)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Callable

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln.adapters.firestore import in_transaction, unavailable_is_retryable

TASKS = "providerTasks"  # {provider}:{taskId} → {jobId} (or {early} before the link)
EVENTS = "providerEvents"  # {provider}:{eventId}: a callback event seen (replays are acked)
#: How long a task link and a seen event are kept (a Firestore TTL policy on ``expireAt``
#: deletes them): longer than any job may wait (``KILN_MAX_JOB_SECONDS``) and than any
#: provider retries a callback.
INDEX_TTL = dt.timedelta(days=7)


def _key(provider: str, name: str) -> str:
    # A document id may not contain "/" nor be "." or ".."; quoting keeps ids distinct.
    return f"{provider}:{urllib.parse.quote(name, safe='')}"


class FirestoreTaskIndex:
    """``kiln.ports.TaskIndex`` in ``providerTasks`` and ``providerEvents`` (server only:
    the rules deny every client). Each read-and-write is one transaction, so a callback
    that races the worker's link is either found by the link (``early``) or finds it."""

    def __init__(self, client: firestore.Client,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.client = client
        self.now = now

    def _ref(self, collection: str, provider: str, name: str) -> firestore.DocumentReference:
        return self.client.collection(collection).document(_key(provider, name))

    def link(self, provider: str, task_id: str, job_id: str) -> bool:
        ref = self._ref(TASKS, provider, task_id)

        def body(tx: firestore.Transaction) -> bool:
            snap = ref.get(transaction=tx)
            early = bool(snap.exists and (snap.to_dict() or {}).get("early"))
            tx.set(ref, {"jobId": job_id, "provider": provider, "taskId": task_id,
                         "expireAt": self.now() + INDEX_TTL})
            return early

        return in_transaction(self.client, body, store="task index")

    def job_for(self, provider: str, task_id: str) -> str | None:
        ref = self._ref(TASKS, provider, task_id)

        def body(tx: firestore.Transaction) -> str | None:
            snap = ref.get(transaction=tx)
            job_id = (snap.to_dict() or {}).get("jobId") if snap.exists else None
            if job_id:
                return str(job_id)
            tx.set(ref, {"early": True, "provider": provider, "taskId": task_id,
                         "expireAt": self.now() + INDEX_TTL})
            return None

        return in_transaction(self.client, body, store="task index")

    def first_seen(self, provider: str, event_id: str) -> bool:
        ref = self._ref(EVENTS, provider, event_id)
        try:
            with unavailable_is_retryable("task index"):
                ref.create({"provider": provider, "eventId": event_id,
                            "expireAt": self.now() + INDEX_TTL})
        except gexc.AlreadyExists:
            return False
        return True

    def forget(self, provider: str, event_id: str) -> None:
        with unavailable_is_retryable("task index"):
            self._ref(EVENTS, provider, event_id).delete()
