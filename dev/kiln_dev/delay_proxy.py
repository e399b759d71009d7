"""A TCP proxy that holds each chunk of the server's answers before passing it on: a
backend that answers later, for measuring what waiting costs a client
(``make bench-parts ARGS=--libraries``, ``make bench ARGS=--peer-redis-hold-ms``).

``python -m kiln_dev.delay_proxy UPSTREAM_PORT HOLD_MS [--port PORT] [--until-eof]``
listens on 127.0.0.1 (``PORT``, or any free one), prints its port, and serves until it is
signalled (or, with ``--until-eof``, until its stdin closes). What the client sends
passes at once; each chunk the server sends back waits ``HOLD_MS`` first.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
import time


def start(upstream: int, hold_ms: float, port: int = 0) -> socket.socket:
    """Listen on 127.0.0.1:``port`` and proxy each connection to ``upstream`` on threads;
    the listening socket (close it to stop taking connections)."""
    listener = socket.create_server(("127.0.0.1", port))

    def forward(source: socket.socket, sink: socket.socket, hold: float) -> None:
        try:
            while data := source.recv(65536):
                if hold:
                    time.sleep(hold)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", upstream))
            for end in (client, server):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=forward, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=forward, args=(server, client, hold_ms / 1000),
                             daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.delay_proxy", description=__doc__)
    parser.add_argument("upstream", type=int)
    parser.add_argument("hold_ms", type=float)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--until-eof", action="store_true")
    args = parser.parse_args(argv)
    stop = {signal.SIGTERM, signal.SIGINT}
    if not args.until_eof:  # blocked before the threads start, so only sigwait takes them
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    listener = start(args.upstream, args.hold_ms, args.port)
    print(listener.getsockname()[1], flush=True)
    if args.until_eof:
        sys.stdin.read()
    else:
        signal.sigwait(stop)
    listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
