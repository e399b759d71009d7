"""How hard Kiln tries: attempts, backoff, leases and deadlines as one piece of data.

Like Temporal's ``RetryPolicy`` or arq's ``Retry(defer=…)``: the lifecycle asks the policy,
nobody else computes a backoff or compares attempts with a maximum.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from kiln.core.errors import ConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` runs of a job; between them ``initial_backoff * coefficient**(n-1)``
    seconds (at most ``max_backoff``, at least what the provider asked for); a lease of
    ``lease_seconds`` renewed while a worker runs; ``max_age_seconds`` from acceptance
    (or an explicit retry) to the job's deadline."""

    max_attempts: int = 3
    initial_backoff: float = 10.0
    backoff_coefficient: float = 2.0
    max_backoff: float = 600.0
    lease_seconds: float = 90.0
    max_age_seconds: float = 3 * 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("KILN_MAX_ATTEMPTS must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError("the retry backoff must be >= 0 and below its maximum")
        if self.backoff_coefficient < 1:
            raise ConfigError("the backoff coefficient must be at least 1")
        if self.lease_seconds <= 0 or self.max_age_seconds <= 0:
            raise ConfigError("lease and maximum age must be positive")

    def exhausted(self, attempts: int) -> bool:
        """No attempt is left after ``attempts`` runs."""
        return attempts >= self.max_attempts

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th run failed and may be retried."""
        delay = self.initial_backoff * self.backoff_coefficient ** max(0, attempts - 1)
        delay = min(delay, self.max_backoff)
        return max(delay, retry_after) if retry_after is not None else delay

    def deadline(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.max_age_seconds)

    def lease_until(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.lease_seconds)


@dataclass(frozen=True)
class PollCadence:
    """How often a job waiting on a remote task is checked: ``first`` seconds after the
    submit, then each wait ``factor`` times longer, at most ``max`` (data, per provider).
    A provider callback checks at once in between; polling is the fallback."""

    first: float = 2.0
    factor: float = 1.5
    max: float = 30.0

    def __post_init__(self) -> None:
        if self.first <= 0 or self.factor < 1 or self.max < self.first:
            raise ConfigError("a poll cadence needs first > 0, factor >= 1, max >= first")

    def delay(self, checks: int) -> float:
        """Seconds until the next check after ``checks`` checks were made."""
        return min(self.max, self.first * self.factor ** max(0, checks))
