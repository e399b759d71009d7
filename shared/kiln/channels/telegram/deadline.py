"""Bot API connections that end by their call's deadline, however Telegram paces its bytes.

httpx's timeouts are per step (each read may wait the whole read timeout, so a slow upload
or a dripped answer can take many of them). Inside :func:`ending_by`, every connect, TLS
handshake, write and read on a :func:`cut_transport` connection is cut to what is left of
the deadline, and past it raises httpcore's timeout (httpx's ``TimeoutException``). The
deadline is per thread (a context variable): the pooled client is shared, each call
carries its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

#: When the call under way must end (``time.monotonic()``); ``inf``: no deadline.
_ENDS: contextvars.ContextVar[float] = contextvars.ContextVar("telegram_call_ends",
                                                              default=math.inf)


@contextlib.contextmanager
def ending_by(ends: float) -> Iterator[None]:
    """Cut the connections used inside this block to ``ends`` (``time.monotonic()``)."""
    token = _ENDS.set(ends)
    try:
        yield
    finally:
        _ENDS.reset(token)


def _cut(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """``timeout`` cut to what is left; ``timed_out`` when nothing is."""
    ends = _ENDS.get()
    if ends == math.inf:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise timed_out("out of time: the call's deadline passed")
    return left if timeout is None else min(left, timeout)


class _CutStream(httpcore.NetworkStream):
    """A connection whose every wait (TLS handshake, write, read) ends by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        wait = _cut(timeout, httpcore.ConnectTimeout)
        return _CutStream(self._inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CutBackend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        wait = _cut(timeout, httpcore.ConnectTimeout)
        return _CutStream(super().connect_tcp(host, port, wait, local_address, socket_options))


def cut_transport() -> httpx.HTTPTransport:
    """httpx's transport with its default limits, on connections cut to the deadline."""
    context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=context)
    # httpx has no public hook for the network backend: rebuild its pool with ours (as
    # kiln.providers.pinned does), with httpx's default limits.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=context, max_connections=100, max_keepalive_connections=20,
        keepalive_expiry=5.0, network_backend=_CutBackend())
    return transport
