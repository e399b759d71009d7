"""Errors that say what should happen next.

- :class:`RetryableError`: a passing fault (provider 5xx, timeout, 429, an unavailable
  service). The worker releases the job and raises so Pub/Sub redelivers, until the job
  runs out of attempts.
- :class:`PermanentError`: retrying cannot help (bad prompt, refused content, invalid
  artifact). The worker records ``failed`` with the code and message, then acks.
- :class:`ValidationError`: what was asked is not valid (a bad job request); raised by the
  domain with no HTTP in it. Each edge maps it: the HTTP API answers 400, a chat replies.
- :class:`RequestError`: the caller's mistake at the HTTP edge, with its status code.

Adapters translate SDK exceptions into these (``raise ... from exc``). Every ``message``
is written to be safe to show to an end user: no secrets, no stack traces.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(KilnError):
    """The deployment is misconfigured (raised at start-up, never per job)."""

    code = "config"


class RetryableError(KilnError):
    """A passing fault: try the job again later.

    Args:
        retry_after: seconds the other side asked us to wait (HTTP 429 ``Retry-After``).
    """

    code = "unavailable"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class TicketTakenError(RetryableError):
    """A quota ticket a job's create carried (``NewJob.tickets``) was taken by another
    request first: nothing was written; take other numbers and create again."""

    code = "contention"


class PermanentError(KilnError):
    """Retrying cannot help: the job fails with this code and message."""

    code = "failed"


class CanceledError(KilnError):
    """The job was canceled while it ran; stop work, change nothing."""

    code = "canceled"


class LeaseLostError(KilnError):
    """Another worker owns the job now (our lease expired); stop without writing."""

    code = "lease_lost"


class ValidationError(KilnError):
    """A request the domain refuses: ``code`` (e.g. ``invalid_prompt``), a ``message`` to
    show the user as is, and the ``field`` at fault (``"options.seed"``; None for the body)."""

    code = "invalid"

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class NotFoundError(KilnError):
    """No such job (or not the caller's: the same answer, so ids are not probeable)."""

    code = "not_found"


class ConflictError(KilnError):
    """The request contradicts what exists (an idempotency key reused for another request)."""

    code = "conflict"


class RequestError(KilnError):
    """The caller's mistake: answered with ``status`` and ``{error: {code, message}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


class TransitionError(KilnError):
    """A state change the job's current status does not allow."""

    code = "invalid_transition"


class LimitError(KilnError):
    """Admission refused the request (nothing was created); try again after
    ``retry_after`` seconds. The message is for the caller as is."""

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class QuotaExceededError(LimitError):
    """The caller's plan allows no more jobs today (HTTP 429)."""


class OverloadedError(LimitError):
    """Too many jobs are waiting to start across Kiln (backpressure, HTTP 503)."""
