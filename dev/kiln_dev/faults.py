"""Fault-injecting proxies for the local stack: make a dependency fail on purpose.

- :class:`TcpProxy` forwards raw TCP (gRPC to the Firestore or Pub/Sub emulator, or
  anything else). ``down()`` resets every open connection and refuses new ones until
  ``up()``: "the service is unreachable", as a network partition looks to a client.
- :class:`HttpFaultProxy` forwards HTTP/1.1 request by request (the Cloud Storage
  emulator) and, for a chosen fraction of requests, answers ``503`` without forwarding,
  resets the connection before forwarding, or forwards and then resets (the change
  happened but the client never heard), optionally only for requests that match.

Both run in the process that starts them (threads), count what they did in ``stats``,
and are controlled by plain attribute writes, so a test or the chaos runner can change
the weather while jobs run. Neither speaks TLS: they exist for 127.0.0.1 emulators only.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln_dev.background import BackgroundServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "trailer", "upgrade", "content-length"}


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a dropped link looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """A TCP forwarder with an off switch. ``address`` is ``host:port`` to give clients."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, name: str = "tcp") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.stats: Counter[str] = Counter()
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self._listener.getsockname()[0]}:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"{self.name}-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._drop_all()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def down(self) -> None:
        """Reset every open connection and refuse new ones (until :meth:`up`)."""
        self._down.set()
        self._drop_all()

    def up(self) -> None:
        self._down.clear()

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _reset(conn)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                self.stats["refused"] += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self.stats["upstream_unreachable"] += 1
                _reset(client)
                continue
            upstream.settimeout(None)
            self.stats["connections"] += 1
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


#: ``match(method, path) -> bool``: which requests faults may hit.
Matcher = Callable[[str, str], bool]


class HttpFaultProxy(BackgroundServer):
    """An HTTP/1.1 reverse proxy that fails a fraction of requests.

    Attributes (change them at any time):
        error_rate: fraction answered ``503`` without reaching the upstream.
        reset_rate: fraction whose connection is reset before forwarding.
        reset_after_rate: fraction forwarded, then reset before the answer is sent.
        down: every request is reset (the service is unreachable).
        hold: when set to an event, requests wait (up to a minute) for it to be set
            before going on: a service that stalls.
        drip: seconds between the bytes of an answer's body (0: sent at once): a service
            that keeps every read alive and never finishes.
        match: only requests it accepts are eligible for faults (default: all).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, seed: int | None = None, name: str = "http") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.error_rate = 0.0
        self.reset_rate = 0.0
        self.reset_after_rate = 0.0
        self.down = False
        self.hold: threading.Event | None = None
        self.drip = 0.0
        self.match: Matcher = lambda _method, _path: True
        self.stats: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        httpd = ThreadingHTTPServer((host, port), self._handler())
        httpd.daemon_threads = True
        # Clients that give up mid-request are part of the weather, not news.
        httpd.handle_error = lambda *_args: None  # type: ignore[method-assign,assignment]
        super().__init__(httpd)
        self.thread_name = f"{name}-proxy"

    def calm(self) -> None:
        """No more faults."""
        self.error_rate = self.reset_rate = self.reset_after_rate = self.drip = 0.0
        self.down = False

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            self.stats["requests"] += 1
            if self.down:
                self.stats["reset_down"] += 1
                return "reset"
            if not self.match(method, path):
                return "pass"
            roll = self._random.random()
            for fault, rate in (("error", self.error_rate), ("reset", self.reset_rate),
                                ("reset_after", self.reset_after_rate)):
                if roll < rate:
                    self.stats[fault] += 1
                    return fault
                roll -= rate
            return "pass"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _proxy(self) -> None:
                body = self._read_body()
                hold = proxy.hold
                if hold is not None and proxy.match(self.command, self.path):
                    proxy.stats["held"] += 1
                    hold.wait(60)
                fault = proxy._decide(self.command, self.path)
                if fault == "reset":
                    self.close_connection = True
                    _reset(self.connection)
                    return
                if fault == "error":
                    data = (b'{"error": {"code": 503, "message": "Injected fault: the service '
                            b'is unavailable.", "errors": []}}')
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                try:
                    upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    upstream.close()
                except OSError:
                    proxy.stats["upstream_unreachable"] += 1
                    self.close_connection = True
                    _reset(self.connection)
                    return
                if fault == "reset_after":
                    self.close_connection = True
                    _reset(self.connection)
                    return
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() not in ("server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                drip = proxy.drip if proxy.match(self.command, self.path) else 0.0
                if not drip:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):  # each byte well within any read timeout
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(drip)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _proxy

        return Handler
