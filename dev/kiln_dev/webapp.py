"""The reference web app (``clients/web``) against the local stack: ``make web``.

Builds the app with Vite when needed, starts a :class:`~kiln_dev.stack.LocalStack` and
serves ``clients/web/dist`` from a small static server that also answers:

- ``/config.json``: where the app finds the HTTP API, the Firestore emulator and the project;
- ``/_storage/...``: a same-origin proxy to the Storage emulator, which sends no CORS headers
  (``<model-viewer>`` fetches GLBs with ``fetch``); deployed apps read Cloud Storage directly;
- any other path without a file (the deep link ``/jobs/{jobId}``): ``index.html``.

Open ``http://127.0.0.1:<port>/?uid=alice`` to sign in as ``alice`` (unsigned emulator
tokens; local mode only).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import shutil
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from kiln_dev.background import BackgroundServer
from kiln_dev.stack import REPO, LocalStack, StackConfig, wait_until_interrupted

WEB = REPO / "clients" / "web"
DIST = WEB / "dist"
STORAGE_PROXY = "/_storage"


def build(web: Path = WEB, *, force: bool = False) -> Path:
    """``npm ci`` (if node_modules is missing) and ``vite build``; returns the dist folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the web app needs Node.js 20+ to build.")
    if not (web / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=web, check=True)
    dist = web / "dist"
    if force or not (dist / "index.html").is_file() or _stale(web, dist):
        subprocess.run([npm, "run", "build", "--silent"], cwd=web, check=True)
    return dist


def _stale(web: Path, dist: Path) -> bool:
    built = (dist / "index.html").stat().st_mtime
    sources = [web / "index.html", web / "vite.config.js", web / "package-lock.json",
               *(web / "src").rglob("*")]
    return any(p.is_file() and p.stat().st_mtime > built for p in sources)


def app_config(stack: LocalStack) -> dict[str, Any]:
    """The ``/config.json`` of the app for this stack (shape: docs/client-contract.md)."""
    env = stack.client_env()
    host, _, port = env["FIRESTORE_EMULATOR_HOST"].rpartition(":")
    return {
        "mode": "local",
        "apiUrl": stack.ingress_url,
        "firebase": {"projectId": stack.config.project, "storageBucket": stack.bucket},
        "emulators": {
            "firestore": {"host": host, "port": int(port)},
            "storageUrl": env["STORAGE_EMULATOR_HOST"],
            "storageProxy": STORAGE_PROXY,
        },
    }


class WebServer(BackgroundServer):
    """Serves a built app, its ``/config.json`` and the Storage proxy; ``start()``/``stop()``."""

    thread_name = "web-server"

    def __init__(self, dist: Path, config: dict[str, Any], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.dist = dist.resolve()
        self.config = config
        httpd = ThreadingHTTPServer((host, port), self._handler())
        httpd.daemon_threads = True
        super().__init__(httpd)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _file(self, path: str) -> Path:
        """The file for a URL path; ``index.html`` for app routes (``/jobs/…``)."""
        candidate = (self.dist / path.lstrip("/")).resolve()
        if candidate.is_file() and candidate.is_relative_to(self.dist):
            return candidate
        return self.dist / "index.html"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str,
                      cache: str = "no-cache") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", cache)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/config.json":
                    self._send(200, json.dumps(server.config).encode(), "application/json")
                elif path.startswith(STORAGE_PROXY + "/"):
                    self._proxy_storage()
                else:
                    file = server._file(path)
                    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                    # Hashed assets never change; index.html must always be fresh.
                    cache = ("public, max-age=31536000, immutable" if "/assets/" in path
                             else "no-cache")
                    self._send(200, file.read_bytes(), kind, cache)

            def _proxy_storage(self) -> None:
                base = server.config["emulators"]["storageUrl"].rstrip("/")
                target = base + self.path[len(STORAGE_PROXY):]
                try:
                    upstream = httpx.get(target, timeout=30)
                except httpx.HTTPError:
                    self._send(502, b"storage emulator unreachable", "text/plain")
                    return
                self._send(upstream.status_code, upstream.content,
                           upstream.headers.get("content-type", "application/octet-stream"))

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.webapp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("KILN_WEB_PORT", "5173")))
    parser.add_argument("--no-build", action="store_true", help="serve clients/web/dist as it is")
    args = parser.parse_args(argv)
    dist = DIST if args.no_build else build()
    print("starting the local stack…", flush=True)
    with LocalStack(StackConfig()) as stack, WebServer(dist, app_config(stack), port=args.port) as web:
        print(f"Kiln web app: {web.url}/?uid=alice  (API {stack.ingress_url}; Ctrl-C stops)",
              flush=True)
        try:
            wait_until_interrupted()
        except KeyboardInterrupt:
            print("stopping…", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
