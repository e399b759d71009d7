"""Connections that go only where a URL was checked to lead, and keep moving.

The network layer under :mod:`kiln.providers.fetch` and :mod:`kiln.webhooks.send`: an httpx
client whose pool connects each host only to the address pinned for it (the Host header and
TLS SNI keep the name), whose every connect, TLS handshake, write and read is cut to what
is left of a deadline, and whose reads may have to bring ``floor`` bytes in each ``window``
seconds spent waiting (:class:`Pace`). It follows no redirect and ignores proxies.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from kiln.providers.fetch import FetchPolicy


@dataclass
class Pace:
    """How long a client's connections may still wait, beyond httpx's timeout per step: until
    ``deadline`` (``time.monotonic()``), and, reading, ``window`` seconds of waiting for each
    ``floor`` bytes (time the caller spends between reads is not counted)."""

    deadline: float = math.inf
    floor: int = 0
    window: float = math.inf
    _waited: float = dataclasses.field(default=0.0, init=False)
    _got: int = dataclasses.field(default=0, init=False)

    def wait(self, timeout: float | None, timed_out: type[Exception], *,
             reading: bool = False) -> float | None:
        """The timeout for the next step; ``timed_out`` when no time is left."""
        left = self.deadline - time.monotonic()
        if reading and self.floor:
            left = min(left, self.window - self._waited)
        if left <= 0:
            raise timed_out("out of time: past the deadline, or the server stalled")
        wait = left if timeout is None else min(left, timeout)
        return None if wait == math.inf else wait

    def restart(self) -> None:
        """Count progress from here on (a response's body, after its headers)."""
        self._got, self._waited = 0, 0.0

    def read(self, got: int, waited: float) -> None:
        self._got, self._waited = self._got + got, self._waited + waited
        if self._got >= self.floor:
            self._got, self._waited = 0, 0.0


class PacedStream(httpcore.NetworkStream):
    """A connection whose every wait (TLS handshake, write, read) is cut to its pace."""

    def __init__(self, inner: httpcore.NetworkStream, pace: Pace) -> None:
        self._inner, self._pace = inner, pace

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wait = self._pace.wait(timeout, httpcore.ReadTimeout, reading=True)
        started = time.monotonic()
        data = self._inner.read(max_bytes, wait)
        self._pace.read(len(data), time.monotonic() - started)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._pace.wait(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # (CPython bounds the whole handshake by the socket's timeout, not each of its reads.)
        wait = self._pace.wait(timeout, httpcore.ConnectTimeout)
        return PacedStream(self._inner.start_tls(ssl_context, server_hostname, wait), self._pace)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.SyncBackend):
    """Connects each host only to the address that was checked for it, at its pace."""

    def __init__(self, pace: Pace) -> None:
        self.pins: dict[str, str] = {}
        self.pace = pace

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        address = self.pins.get(host.lower().strip("[]"))
        if address is None:  # never reached through open_stream: every hop pins first
            raise httpcore.ConnectError(f"{host} was not checked before connecting")
        wait = self.pace.wait(timeout, httpcore.ConnectTimeout)
        stream = super().connect_tcp(address, port, wait, local_address, socket_options)
        return PacedStream(stream, self.pace)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one loads the CA bundle: ~50 ms)."""
    return httpx.create_ssl_context(trust_env=False)


def pinned_client(policy: FetchPolicy, *, deadline: float = math.inf) -> tuple[httpx.Client, dict[str, str]]:
    """A client that connects each host only to the address pinned for it in the returned
    map (fill it from :func:`check_url` before each request), follows no redirect and
    ignores proxies (``kiln.webhooks.send`` posts through it). Its connects, TLS
    handshakes, writes and reads end by ``deadline`` (``time.monotonic()``): past it, an
    :class:`httpx.TimeoutException`, however the server paces its bytes."""
    return paced_client(policy, Pace(deadline=deadline))


def paced_client(policy: FetchPolicy, pace: Pace) -> tuple[httpx.Client, dict[str, str]]:
    """httpx's client on a pinned, paced network backend (TLS still verifies the name)."""
    backend = _PinnedBackend(pace)
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend: rebuild its pool with ours.
    transport._pool = httpcore.ConnectionPool(ssl_context=_ssl_context(), max_connections=4,
                                              network_backend=backend)
    client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                          timeout=httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout))
    return client, backend.pins
