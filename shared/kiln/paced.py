"""httpx connections that end by a deadline and keep moving, optionally pinned.

httpx's timeouts are per step: each read may wait the whole read timeout, so a server that
drips its bytes (or a slow upload) can hold a call for many of them. Connections made by a
:func:`paced_transport` cut every connect, TLS handshake, write and read to their
:class:`Pace`: what is left of the pace's deadline, or of the deadline of the call under
way (:func:`ending_by`, per thread: one pooled client serves calls with deadlines of their
own), whichever ends first; past it they raise httpcore's timeout (httpx's
``TimeoutException``). A pace may also require reads to bring ``floor`` bytes in each
``window`` seconds spent waiting. With ``pins``, a host is connected only to the address
checked for it (``kiln.providers.fetch``); the Host header and TLS SNI keep the name.

Used by the result downloads and URL checks (``kiln.providers.fetch``), signed webhooks
(``kiln.webhooks.send``) and the Bot API client (``kiln.channels.telegram.client``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

#: When the call under way must end (``time.monotonic()``); ``inf``: no deadline.
_ENDS: contextvars.ContextVar[float] = contextvars.ContextVar("kiln_call_ends", default=math.inf)


@contextlib.contextmanager
def ending_by(ends: float) -> Iterator[None]:
    """Cut the paced connections used inside this block to ``ends`` (``time.monotonic()``),
    or to the deadline of a block around it, whichever comes first."""
    token = _ENDS.set(min(ends, _ENDS.get()))
    try:
        yield
    finally:
        _ENDS.reset(token)


def time_left() -> float:
    """Seconds left of the call under way (:func:`ending_by`); ``inf`` outside one. For
    work inside the call that is not on a paced connection (a Storage read feeding an
    upload's body)."""
    ends = _ENDS.get()
    return ends - time.monotonic() if ends != math.inf else math.inf


@dataclass
class Pace:
    """How long a client's connections may still wait, beyond httpx's timeout per step: until
    ``deadline`` (``time.monotonic()``) or the call's own (:func:`ending_by`), and, reading,
    ``window`` seconds of waiting for each ``floor`` bytes (time the caller spends between
    reads is not counted). One pace with a floor serves one download at a time."""

    deadline: float = math.inf
    floor: int = 0
    window: float = math.inf
    _waited: float = dataclasses.field(default=0.0, init=False)
    _got: int = dataclasses.field(default=0, init=False)

    def wait(self, timeout: float | None, timed_out: type[Exception], *,
             reading: bool = False) -> float | None:
        """The timeout for the next step; ``timed_out`` when no time is left."""
        left = min(self.deadline - time.monotonic(), time_left())
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
        if not self.floor:
            return
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


class _PacedBackend(httpcore.SyncBackend):
    """Connects at its pace; with ``pins``, each host only to the address checked for it."""

    def __init__(self, pace: Pace, pins: dict[str, str] | None) -> None:
        self.pace, self.pins = pace, pins

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        address = host
        if self.pins is not None:
            address = self.pins.get(host.lower().strip("[]"), "")
            if not address:  # never reached through fetch: every request pins first
                raise httpcore.ConnectError(f"{host} was not checked before connecting")
        wait = self.pace.wait(timeout, httpcore.ConnectTimeout)
        stream = super().connect_tcp(address, port, wait, local_address, socket_options)
        return PacedStream(stream, self.pace)


def paced_transport(pace: Pace, ssl_context: ssl.SSLContext, *,
                    pins: dict[str, str] | None = None, trust_env: bool = True,
                    **pool: Any) -> httpx.HTTPTransport:
    """httpx's transport on paced connections (``pool``: httpcore's pool limits)."""
    transport = httpx.HTTPTransport(verify=ssl_context, trust_env=trust_env)
    # httpx has no public hook for the network backend: rebuild its pool with ours.
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context,
                                              network_backend=_PacedBackend(pace, pins), **pool)
    return transport
