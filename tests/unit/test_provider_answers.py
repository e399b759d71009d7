"""Providers' bad answers, from a small scripted HTTP server on 127.0.0.1 speaking each
provider's protocol (the real provider classes, no mocks), classified as a user and the
worker need: a secret never in a message, a malformed field or an unreadable poll is a
blip (asked again), a result cut off on the way is fetched again, a result larger than it
said is refused before it is held, a valid large image is stored without a thumbnail, and
a dripped answer ends at the call's timeout (cases a review found; each failed before)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from kiln.core.errors import PermanentError, RetryableError
from kiln.providers.base import Artifact, GenerationRequest, TaskState, iter_chunks
from kiln.providers.gemini import GeminiImageProvider
from kiln.providers.meshy import MeshyProvider
from kiln.providers.taskserver import TaskServerProvider
from kiln.runtime.results import store_result
from kiln.settings import Settings
from kiln_dev.fakes import InMemoryBlobs

Route = Callable[[BaseHTTPRequestHandler], None]
TASK_KEY = "sk-live-SECRET-0123456789"
MESHY_KEY = "msy_LIVEKEY_abcdef0123456789"


class Scripted:
    """Answers each (method, path) with its route; 404 for any other."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                route = routes.get((self.command, self.path.split("?")[0]))
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    route(self)

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()


@pytest.fixture
def srv() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.server.shutdown()
    server.server.server_close()


def answer(status: int, body: bytes | str, content_type: str = "application/json", *,
           length: bool = True) -> Route:
    """One answer; ``length=False``: no Content-Length, the body ends when the server closes
    the connection (where a cut-off answer looks complete to the client)."""
    data = body.encode() if isinstance(body, str) else body

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        if length:
            handler.send_header("Content-Length", str(len(data)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(data)

    return route


def taskserver(srv: Scripted, **kwargs: Any) -> TaskServerProvider:
    settings = Settings(env="local", taskserver_url=srv.url, taskserver_api_key=TASK_KEY)
    return TaskServerProvider(settings, **{"timeout": 5, "fetch_read_timeout": 5, **kwargs})


def meshy(srv: Scripted) -> MeshyProvider:
    settings = Settings(env="local", meshy_base_url=srv.url, meshy_api_key=MESHY_KEY)
    return MeshyProvider(settings, timeout=5, fetch_read_timeout=5)


def task(srv: Scripted, body: Any) -> None:
    srv.routes[("GET", "/v1/tasks/t1")] = answer(200, json.dumps(body))


def meshy_task(srv: Scripted, body: Any) -> None:
    srv.routes[("GET", "/openapi/v2/tasks/abc")] = answer(200, json.dumps(body))


# --- secrets ---------------------------------------------------------------------------------


def test_a_failed_tasks_message_never_carries_the_key(srv: Scripted) -> None:
    task(srv, {"status": "failed", "error": {
        "code": "upstream_auth", "message": f"upstream refused Authorization: Bearer {TASK_KEY}"}})
    status = taskserver(srv).poll("t1")
    assert TASK_KEY not in status.error_message and "***" in status.error_message
    meshy_task(srv, {"status": "FAILED", "task_error": {
        "message": f"Image download failed: 401 for header Bearer {MESHY_KEY}"}})
    status = meshy(srv).poll("text:abc")
    assert MESHY_KEY not in status.error_message and "***" in status.error_message


def test_a_key_near_the_trimmed_end_of_a_refusal_is_hidden_whole(srv: Scripted) -> None:
    """The message was trimmed to 300 characters before the key was replaced: the part of
    the key before the cut survived."""
    message = "x" * 280 + f" Bearer {TASK_KEY} was refused"
    srv.routes[("POST", "/v1/tasks")] = answer(400, json.dumps({"error": {"message": message}}))
    with pytest.raises(PermanentError) as refused:
        taskserver(srv).submit(GenerationRequest("job1", "image", "a fox"))
    assert "sk-live" not in refused.value.message


# --- blips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("progress", ["50%", float("nan"), float("inf"), True, None])
def test_a_malformed_progress_is_zero_not_an_error(srv: Scripted, progress: Any) -> None:
    body = json.dumps({"status": "running", "progress": progress}).replace('"NaN"', "NaN")
    srv.routes[("GET", "/v1/tasks/t1")] = answer(200, body)
    assert taskserver(srv).poll("t1").progress == 0
    srv.routes[("GET", "/openapi/v2/tasks/abc")] = answer(
        200, json.dumps({"status": "IN_PROGRESS", "progress": progress}))
    assert meshy(srv).poll("text:abc").state is TaskState.RUNNING


def test_a_succeeded_task_with_a_malformed_progress_still_succeeds(srv: Scripted) -> None:
    task(srv, {"status": "succeeded", "progress": "100%"})
    assert taskserver(srv).poll("t1").state is TaskState.SUCCEEDED


@pytest.mark.parametrize("body", ["", "null", "[]", '{"error": {"message": "busy"}}'])
def test_an_unreadable_poll_is_a_blip_not_a_failed_job(srv: Scripted, body: str) -> None:
    """A 200 that is no task (empty, null, a list, an error object with no status) says
    nothing about the paid task: the job parks and asks again."""
    srv.routes[("GET", "/v1/tasks/t1")] = answer(200, body)
    with pytest.raises(RetryableError) as blip:
        taskserver(srv).poll("t1")
    assert blip.value.code == "provider_unavailable"
    if body != '{"error": {"message": "busy"}}':  # Meshy reads a task with no status as running
        srv.routes[("GET", "/openapi/v2/tasks/abc")] = answer(200, body)
        with pytest.raises(RetryableError):
            meshy(srv).poll("text:abc")


def test_an_unreadable_gemini_answer_is_a_blip(srv: Scripted) -> None:
    settings = Settings(env="local", gemini_api_key="AIzaSy-test-key")
    srv.routes[("POST", f"/v1beta/models/{settings.gemini_model}:generateContent")] = answer(
        200, "<html>upstream proxy hiccup</html>", "text/html")
    provider = GeminiImageProvider(settings, base_url=srv.url, timeout=10)
    with pytest.raises(RetryableError) as blip:
        provider.generate(GenerationRequest("j", "image", "a fox"), lambda *_: None,
                          lambda: False)
    assert blip.value.code == "provider_unavailable"


def test_a_dripped_answer_ends_at_the_calls_timeout(srv: Scripted) -> None:
    """An answer dripped a byte every 0.3 s: each read is quick, the call is not. It ends
    at the call's 1 s timeout (it took the whole drip, 30 s for a 2 s timeout)."""
    body = b'{"status": "running", "progress": 10, "stage": "' + b"x" * 40 + b'"}'
    done = threading.Event()

    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # the client hangs up: that is the point
            for i in range(len(body)):
                if done.wait(0.3):
                    return
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()

    srv.routes[("GET", "/v1/tasks/t1")] = drip
    started = time.monotonic()
    with pytest.raises(RetryableError) as slow:
        taskserver(srv, timeout=1.0).poll("t1")
    done.set()
    assert slow.value.code == "provider_timeout"
    assert time.monotonic() - started < 5


# --- results ---------------------------------------------------------------------------------


@functools.cache
def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 60, 90)).save(out, format="PNG")
    return out.getvalue()


def finished(srv: Scripted, data: bytes, declared: int, *, length: bool = True) -> None:
    task(srv, {"status": "succeeded", "result": {
        "url": "/files/t1.png", "content_type": "image/png", "bytes": declared,
        "sha256": hashlib.sha256(data).hexdigest()}})
    srv.routes[("GET", "/files/t1.png")] = answer(200, data, "image/png", length=length)


def test_a_result_cut_off_on_the_way_is_fetched_again(srv: Scripted) -> None:
    data = png(64, 64)
    finished(srv, data[: len(data) // 2], len(data), length=False)
    artifact = taskserver(srv).fetch("t1", GenerationRequest("j", "image", "p"))
    with pytest.raises(RetryableError) as cut:
        b"".join(artifact.chunks)
    assert cut.value.code == "fetch_incomplete"


def test_a_result_larger_than_declared_is_refused_before_it_is_held(srv: Scripted) -> None:
    """It said 100 bytes and sends 6 MiB: refused within a chunk of the 100 bytes, and the
    small-image path never joins it whole."""
    data = b"\x89PNG\r\n\x1a\n" + b"A" * (6 * 1024 * 1024)
    finished(srv, data, 100)
    artifact = taskserver(srv).fetch("t1", GenerationRequest("j", "image", "p"))
    passed = 0
    with pytest.raises(PermanentError) as larger:
        for chunk in artifact.chunks:
            passed += len(chunk)
    assert larger.value.code == "invalid_artifact" and passed <= 100
    blobs = InMemoryBlobs()
    lying = Artifact(kind="image", content_type="image/png", chunks=iter_chunks(data), size=100)
    with pytest.raises(PermanentError):
        store_result(blobs, JOB, lying, max_bytes=2**31)
    assert blobs.list("generations/") == []


class JobRef:
    """The two fields ``store_result`` reads."""

    uid, id = "u1", "job1"


JOB: Any = JobRef()


@pytest.mark.parametrize("known_size", [True, False])
def test_a_valid_image_too_large_for_a_thumbnail_is_stored_without_one(known_size: bool) -> None:
    """A valid 7680×4320 PNG: the job completed without a thumbnail (it failed after the
    image was stored, leaving it behind)."""
    data = png(7680, 4320)
    blobs = InMemoryBlobs()
    artifact = Artifact(kind="image", content_type="image/png", chunks=iter_chunks(data),
                        size=len(data) if known_size else None)
    result = store_result(blobs, JOB, artifact, max_bytes=2**31)
    assert result["bytes"] == len(data) and "thumbnailPath" not in result
    assert blobs.list("generations/") == ["generations/u1/job1/result.png"]


def test_a_slow_meshy_thumbnail_is_skipped_within_its_bound(
        srv: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview picture drips: the fetch goes on without it after THUMBNAIL_SECONDS
    (nothing renews the job's lease meanwhile; at the 17 KiB/s floor 5 MB took 5 minutes)."""
    import kiln.providers.meshy as meshy_module

    monkeypatch.setattr(meshy_module, "THUMBNAIL_SECONDS", 0.5)
    done = threading.Event()

    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        with contextlib.suppress(OSError):  # the client hangs up: that is the point
            while not done.wait(0.1):
                handler.wfile.write(b"\0")
                handler.wfile.flush()

    meshy_task(srv, {"status": "SUCCEEDED", "output": {
        "model_urls": {"glb": f"{srv.url}/m.glb"}, "thumbnail_url": f"{srv.url}/t.png"}})
    srv.routes[("GET", "/m.glb")] = answer(200, b"glTF", "model/gltf-binary")
    srv.routes[("GET", "/t.png")] = drip
    started = time.monotonic()
    artifact = meshy(srv).fetch("text:abc", GenerationRequest("j", "model", "a vase"))
    done.set()
    assert artifact.thumbnail is None and time.monotonic() - started < 3


def test_a_providers_text_reaches_no_one_with_control_characters() -> None:
    """A provider's stage or error message is shown in an operator's terminal (kiln
    watch), a user's app and a chat: ESC, OSC and C1 sequences are spaces, on one line."""
    from kiln.providers.http import short, shown

    text = "\x1b]0;owned\x07\x1b[2Jrendering\u009b31m done\r\nnext\x00"
    assert short(text) == "]0;owned [2Jrendering 31m done next"
    assert shown("key-123\x1b[8m", "key-123") == "*** [8m"
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) < 0xA0 for c in short(text))
