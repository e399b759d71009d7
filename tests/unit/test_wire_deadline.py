"""``wire.Unary`` without a network: each attempt's deadline is what is left of the call's
time, so a retried call ends within it (an attempt used to get the whole time again)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.api_core import retry as retries

from kiln.adapters.wire import Unary


class Unavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a gRPC channel raises when the server cannot be reached."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class Channel:
    """A channel whose one method fails every attempt, recording when each began and the
    deadline it was given."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, float]] = []

    def unary_unary(self, method: str, **kwargs: Any) -> Any:
        def call(request: Any, *, timeout: float, metadata: Any) -> Any:
            self.attempts.append((time.monotonic(), timeout))
            raise Unavailable()
        return call


class Message:
    SerializeToString = FromString = staticmethod(bytes)


@pytest.mark.parametrize("shortened", [None, 0.3])
def test_each_attempt_gets_what_is_left_of_the_calls_time(shortened: float | None) -> None:
    """Given a call of 0.3 s (its own, or shortened to it) retried on UNAVAILABLE every
    ~20 ms, no attempt's deadline reaches past the call's end (each used to get the whole
    0.3 s again), and the call ends in about its time with the last error."""
    channel = Channel()
    unary = Unary(channel, "/x.Y/Z", Message, Message,  # type: ignore[arg-type]
                  metadata=(), timeout=0.3 if shortened is None else 10.0,
                  retry=retries.Retry(initial=0.02, maximum=0.02, multiplier=1, timeout=0.3
                                      if shortened is None else 10.0,
                                      predicate=retries.if_exception_type(
                                          gexc.ServiceUnavailable)))
    started = time.monotonic()
    with pytest.raises((gexc.ServiceUnavailable, gexc.RetryError)):
        unary(object(), shortened)
    elapsed = time.monotonic() - started

    assert len(channel.attempts) >= 3
    # (0.05: an attempt may start late on a loaded machine; each used to end 0.3 s on)
    assert max(at + deadline for at, deadline in channel.attempts) <= started + 0.3 + 0.05
    assert elapsed < 0.3 + 0.5
