"""``wire.Unary`` without a network: each attempt's deadline is what is left of the call's
time, so a retried call ends within it (an attempt used to get the whole time again)."""

from __future__ import annotations

import itertools
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
    """A channel whose one method fails every attempt, recording each attempt's deadline."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []

    def unary_unary(self, method: str, **kwargs: Any) -> Any:
        def call(request: Any, *, timeout: float, metadata: Any) -> Any:
            self.deadlines.append(timeout)
            raise Unavailable()
        return call


class Message:
    SerializeToString = FromString = staticmethod(bytes)


@pytest.mark.parametrize("shortened", [None, 0.3])
def test_each_attempt_gets_what_is_left_of_the_calls_time(shortened: float | None) -> None:
    """Given a call of 0.3 s (its own, or shortened to it) retried on UNAVAILABLE every
    ~20 ms, each attempt's deadline is below the one before and within the 0.3 s, and the
    call ends in about its time with the last error."""
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

    assert len(channel.deadlines) >= 3
    assert all(b < a for a, b in itertools.pairwise(channel.deadlines))
    assert channel.deadlines[0] <= 0.3 and channel.deadlines[-1] < 0.1
    assert elapsed < 0.3 + 0.2
