"""``KilnClient``: Kiln's HTTP API for a backend holding an API key.

Calls that are safe to repeat are retried on 429/503 and connection errors, waiting the
answer's ``Retry-After`` (else an exponential backoff): every GET, every cancel (Kiln
answers a repeated one the same way), and every submission, because each carries an
``Idempotency-Key`` (one is generated when the caller gives none), so a retried submission
returns the same job instead of a second one. An answer that asks for a longer wait than
one pause (``max_backoff`` × 6) is raised at once: a spent daily quota
(:class:`QuotaExceededError`, ``retry_after`` = seconds until it renews) is not waited out
inside a call.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import httpx

from kiln_client.errors import (
    ApiError,
    KilnError,
    QuotaExceededError,
    UnavailableError,
    WaitTimeout,
    error_for,
)
from kiln_client.models import Batch, Job, Submitted, SubmittedBatch

USER_AGENT = "kiln-client/0.1"
#: A job, batch or endpoint id as Kiln makes them; anything else names none.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What an HTTP header value of Kiln's may hold: printable ASCII, no spaces.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,1024}")
#: An Idempotency-Key the API takes (``kiln.http.api``).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class KilnClient:
    """A Kiln API client for one API key (``kiln_…``). Use as a context manager, or
    call :meth:`close`. ``transport`` replaces the network (tests: ``httpx.WSGITransport``)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 retries: int = 4, backoff: float = 0.5, max_backoff: float = 10.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        api_key = api_key.strip() if isinstance(api_key, str) else ""  # (a file's newline)
        if not api_key:
            raise KilnError("an API key is required")
        if not _HEADER_VALUE.fullmatch(api_key):  # never shown: it is the secret
            raise KilnError("the API key holds a character a header cannot carry "
                            "(spaces or control characters inside it?)")
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}",
                                           "User-Agent": USER_AGENT})
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._sleep, self._clock = sleep, clock

    def __enter__(self) -> KilnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, kind: str, prompt: str, options: Mapping[str, Any] | None = None, *,
               idempotency_key: str | None = None) -> Submitted:
        """Submit one job; Kiln answers at once (202) and works in the background."""
        body: dict[str, Any] = {"kind": kind, "prompt": prompt}
        if options:
            body["options"] = dict(options)
        response = self._call("POST", "/v1/jobs", json=body,
                              idempotency_key=idempotency_key or str(uuid.uuid4()))
        data = response.json()
        return Submitted(data["jobId"], data["status"],
                         response.headers.get("Idempotent-Replayed") == "true")

    def get(self, job_id: str) -> Job:
        return Job.from_api(self._call("GET", _path("jobs", job_id)).json())

    def jobs(self, *, page_size: int = 100) -> Iterator[Job]:
        """Every job of the caller, newest first, read ``page_size`` (1–100) at a time as
        the loop goes on (``GET /v1/jobs``, then each answer's ``nextPageToken``)."""
        if not 1 <= page_size <= 100:
            raise KilnError("page_size is 1-100")
        token = ""
        while True:
            query = urllib.parse.urlencode({"limit": page_size, **({"pageToken": token} if token else {})})
            data = self._call("GET", f"/v1/jobs?{query}").json()
            yield from (Job.from_api(item) for item in data["jobs"])
            token = data.get("nextPageToken") or ""
            if not token:
                return

    def cancel(self, job_id: str) -> str:
        """Cancel a pending or running job; its status now (``canceled``)."""
        return str(self._call("POST", _path("jobs", job_id, ":cancel"), repeatable=True)
                   .json()["status"])

    def wait(self, job_id: str, *, on_progress: Callable[[Job], None] | None = None,
             timeout: float = 600.0, interval: float = 0.5, max_interval: float = 5.0) -> Job:
        """Poll until the job has ended; ``on_progress(job)`` on every change of status,
        stage or progress. The interval grows (×1.5) to ``max_interval`` while nothing
        changes and starts again after a change; a busy answer's Retry-After is honoured.

        Raises:
            WaitTimeout: still running after ``timeout`` seconds, or Kiln still busy then
                (no pause, a busy answer's included, runs past the deadline).
        """
        deadline = self._clock() + timeout
        pause, seen = interval, None
        path = _path("jobs", job_id)
        while True:
            try:
                job = Job.from_api(self._call("GET", path, deadline=deadline).json())
            except UnavailableError as exc:
                if self._clock() >= deadline and not isinstance(exc, QuotaExceededError):
                    raise WaitTimeout(job_id, timeout) from exc
                raise
            state = (job.status, job.stage, job.progress)
            if state != seen:
                seen, pause = state, interval
                if on_progress is not None:
                    on_progress(job)
            else:
                pause = min(pause * 1.5, max_interval)
            if job.done:
                return job
            left = deadline - self._clock()
            if left <= 0:
                raise WaitTimeout(job_id, timeout)
            self._sleep(min(pause, left))

    # --- batches --------------------------------------------------------------------------

    def submit_batch(self, items: Iterable[Mapping[str, Any]], *,
                     idempotency_key: str | None = None) -> SubmittedBatch:
        """Submit 1–100 jobs together (all or none); each item is ``{kind, prompt,
        options?}``."""
        response = self._call("POST", "/v1/batches", json={"items": [dict(i) for i in items]},
                              idempotency_key=idempotency_key or str(uuid.uuid4()))
        data = response.json()
        return SubmittedBatch(data["batchId"], list(data["jobIds"]),
                              response.headers.get("Idempotent-Replayed") == "true")

    def get_batch(self, batch_id: str) -> Batch:
        return Batch.from_api(self._call("GET", _path("batches", batch_id)).json())

    def cancel_batch(self, batch_id: str) -> int:
        """Cancel every job of the batch not yet ended; how many this call canceled (a
        retried call after a lost answer counts 0 for the jobs the first one canceled)."""
        return int(self._call("POST", _path("batches", batch_id, ":cancel"), repeatable=True)
                   .json()["canceled"])

    # --- the wire -------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None,
              idempotency_key: str | None = None, repeatable: bool = False,
              deadline: float | None = None) -> httpx.Response:
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise KilnError("an idempotency key is 1-255 printable ASCII characters")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        repeatable = repeatable or method == "GET" or idempotency_key is not None
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, json=json, headers=headers)
            except httpx.LocalProtocolError as exc:  # ours, not an outage; its text may
                raise KilnError(                     # quote a header, the key included
                    f"the request could not be sent ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                error: ApiError = UnavailableError(0, "connection_failed",
                                                   f"{type(exc).__name__}: {exc}")
                pause = self._pause(attempt, None, repeatable, deadline)
                if pause is None:
                    raise error from exc
                self._sleep(pause)
                continue
            if response.is_success:
                return response
            error = _error(response)
            pause = None
            if isinstance(error, UnavailableError) and not isinstance(error, QuotaExceededError):
                pause = self._pause(attempt, error.retry_after, repeatable, deadline)
            if pause is None:
                raise error
            self._sleep(pause)

    def _pause(self, attempt: int, retry_after: float | None, repeatable: bool,
               deadline: float | None) -> float | None:
        """How long to wait before the next attempt, or None: give up now."""
        if not repeatable or attempt > self.retries:
            return None
        if retry_after is None:
            pause = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        elif retry_after > self.max_backoff * 6:
            return None  # asked to come back later than a call should wait
        else:
            pause = retry_after
        if deadline is not None:
            left = deadline - self._clock()
            if left <= 0:
                return None
            pause = min(pause, left)
        return pause


def _path(collection: str, resource_id: str, action: str = "") -> str:
    """``/v1/{collection}/{id}{action}`` for an id Kiln could have made; any other id
    (``..``, a slash, a query) is refused here rather than sent somewhere else."""
    if not isinstance(resource_id, str) or not _ID.fullmatch(resource_id):
        raise KilnError(f"not a Kiln id: {resource_id!r}")
    return f"/v1/{collection}/{urllib.parse.quote(resource_id, safe='')}{action}"


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200] or response.reason_phrase
    raw = response.headers.get("Retry-After")
    retry_after = float(raw) if raw and raw.replace(".", "", 1).isdigit() else None
    return error_for(response.status_code, code, message, retry_after)
