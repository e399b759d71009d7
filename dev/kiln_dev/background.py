"""Run a local stand-in server (FCM, Telegram, a provider, the web app) on a thread."""

from __future__ import annotations

import threading
from typing import Any, Self


class BackgroundServer:
    """Wraps a socketserver-style server (``serve_forever``/``shutdown``/``server_close``).

    The port is bound when the server is built, so ``url`` (and a companion's ``env()``)
    is known before ``start()``.
    """

    thread_name = "local-server"

    def __init__(self, httpd: Any) -> None:
        self._httpd = httpd
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        # A short poll: shutdown() waits for the serving loop to look again (0.5 s by default,
        # paid by every stop of every stand-in).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True, name=self.thread_name)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (also for a server never started, whose
        ``shutdown()`` would otherwise wait forever)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()
