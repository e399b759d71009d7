"""Typed errors: one class per kind of answer, so callers branch on ``except`` clauses.

Every API refusal is ``{"error": {"code", "message"}}``; the class says what happened and
``code`` says exactly which rule (``invalid_prompt``, ``insufficient_scope``, …).
"""

from __future__ import annotations


class KilnError(Exception):
    """Anything this library raises."""


class ApiError(KilnError):
    """The API refused the request (``status``, ``code``, a readable ``message``)."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class BadRequestError(ApiError):
    """400/413/415: the request is invalid; the message names the field (or batch item)."""


class AuthenticationError(ApiError):
    """401: the API key is missing, malformed, unknown or revoked."""


class PermissionDeniedError(ApiError):
    """403: the key lacks the scope this call needs."""


class NotFoundError(ApiError):
    """404: no such job or batch (or not this tenant's)."""


class ConflictError(ApiError):
    """409/422: the job's state forbids it, or an Idempotency-Key was reused."""


class UnavailableError(ApiError):
    """429/5xx: Kiln is busy; ``retry_after`` seconds when the answer said."""


class QuotaExceededError(UnavailableError):
    """429 ``quota_exceeded``: the plan's jobs for today are used up; ``retry_after`` is
    the seconds until the quota renews (midnight UTC). Never retried by the client."""


class WaitTimeout(KilnError):
    """``wait`` gave up before the job ended (the job goes on; wait again or cancel)."""

    def __init__(self, job_id: str, seconds: float) -> None:
        super().__init__(f"job {job_id} had not ended after {seconds:.0f} s")
        self.job_id = job_id


class WebhookVerificationError(KilnError):
    """A webhook request is not a genuine one from Kiln (signature, headers or timestamp)."""


def error_for(status: int, code: str, message: str, retry_after: float | None) -> ApiError:
    kind: type[ApiError]
    if status == 401:
        kind = AuthenticationError
    elif status == 403:
        kind = PermissionDeniedError
    elif status == 404:
        kind = NotFoundError
    elif status in (409, 422):
        kind = ConflictError
    elif status == 429 and code == "quota_exceeded":
        kind = QuotaExceededError
    elif status == 429 or status >= 500:
        kind = UnavailableError
    elif 400 <= status < 500:
        kind = BadRequestError
    else:
        kind = ApiError
    return kind(status, code, message, retry_after)
