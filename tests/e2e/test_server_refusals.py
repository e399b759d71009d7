"""What gunicorn (the server functions-framework runs) refuses before the function is
called is answered in the contract's shape too (issue 15, item 7): raw HTTP/1.1 over a
socket to the local stack's ingress, as a hostile client would send it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from typing import Any

import httpx
import pytest

from kiln.adapters.firebase_auth import emulator_id_token
from kiln.core.job import is_valid_job_id

BODY = b'{"kind": "image", "prompt": "a red cube"}'


def exchange(stack: Any, request: bytes) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(stack.ingress_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post(extra: str, body: bytes = BODY, token: str = "x") -> bytes:
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n").encode() + body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (post(f"Idempotency-Key: {'k' * 10_240}\r\nContent-Length: {len(BODY)}\r\n"),
     431, "headers_too_large"),
    (post("".join(f"X-H{i}: v\r\n" for i in range(120)) + f"Content-Length: {len(BODY)}\r\n"),
     431, "headers_too_large"),
    (post(f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n",
          f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"), 400, "bad_request"),
    (post("Transfer-Encoding: gzip\r\n"), 400, "bad_request"),
    (post(f"Bad Header Name: x\r\nContent-Length: {len(BODY)}\r\n"), 400, "bad_request"),
    (b"GET /robots.txt HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n", 404, "not_found"),
], ids=["idempotency-key-10kb", "120-headers", "length-and-chunked", "gzip-coding",
        "space-in-header-name", "robots"])
def test_the_server_refuses_in_the_contracts_shape(stack: Any, request_bytes: bytes, status: int,
                                                   code: str) -> None:
    got, headers, body = exchange(stack, request_bytes)
    assert (got, headers.get("content-type")) == (status, "application/json"), body[:300]
    assert json.loads(body)["error"]["code"] == code


def malformed_chunks(token: str) -> bytes:
    return post("Transfer-Encoding: chunked\r\n", b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", token)


def test_a_malformed_chunked_body_is_refused_not_a_500(stack: Any) -> None:
    """Given a body whose chunk size is not hexadecimal, then a caller without credentials
    gets 401 (functions-framework's drain of the body after the answer no longer turns it
    into a 500), and a signed-in caller, whose body is read, 400 ``bad_request``."""
    status, _headers, body = exchange(stack, malformed_chunks("x"))
    assert (status, json.loads(body)["error"]["code"]) == (401, "unauthenticated"), body
    token = emulator_id_token("user-chunks", stack.config.project)
    status, _headers, body = exchange(stack, malformed_chunks(token))
    assert (status, json.loads(body)["error"]["code"]) == (400, "bad_request"), body


@pytest.mark.parametrize("declared", [70_000, 300 * 1024 * 1024])
def test_an_oversized_body_is_refused_before_it_is_sent(stack: Any, declared: int) -> None:
    """Given a body declared larger than the limit (64 KiB) of which only 40 bytes are
    sent, the connection left open, then the 413 comes at once: nothing waits for, or
    buffers, the bytes that will never be read (functions-framework drained the whole
    body after every answer, 300 MB into memory)."""
    url = urllib.parse.urlsplit(stack.ingress_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sent = time.monotonic()
        sock.sendall(post(f"Content-Length: {declared}\r\n", b"x" * 40))
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)  # socket.timeout (a failure) if the answer waits
            assert chunk, raw
            raw += chunk
        waited = time.monotonic() - sent
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    assert waited < 1.0  # not the drain's 2 s: a body refused for its size is not read


def test_a_body_sent_a_byte_at_a_time_holds_the_answer_at_most_the_drain_time(stack: Any) -> None:
    """Given a refused request whose client sends its body one byte every 0.4 s (each
    read well within any per-read timeout), then the answer still comes within the
    drain's 2 s in all, plus the request's own time: a slow client cannot hold a thread
    of the ingress for as long as it keeps dripping."""
    url = urllib.parse.urlsplit(stack.ingress_url)
    stop = threading.Event()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nContent-Length: 1000\r\n\r\nx")
        sent = time.monotonic()

        def drip() -> None:
            while not stop.wait(0.4):
                try:
                    sock.sendall(b"x")
                except OSError:
                    return

        threading.Thread(target=drip, daemon=True).start()
        try:
            status, _ = read_answer(sock)
        finally:
            stop.set()
        waited = time.monotonic() - sent
    assert status == 200 and waited < 4.0, waited


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/jobs/__abcdef__"), ("GET", "/v1/jobs/__abcdefgh__/timeline"),
    ("POST", "/v1/jobs/__abcdefgh__:cancel"), ("GET", "/v1/batches/__abcdefgh__"),
    ("POST", "/v1/batches/__abcdefgh__:cancel"),
])
def test_an_id_firestore_reserves_is_not_found(stack: Any, method: str, path: str) -> None:
    """Given an id of the form ``__…__`` (Firestore refuses to read such a document, with an
    error), then it is an id no job or batch has: 404, not a 500."""
    token = emulator_id_token("user-reserved", stack.config.project)
    response = httpx.request(method, f"{stack.ingress_url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_reserved_and_non_ascii_ids_are_not_job_ids() -> None:
    assert is_valid_job_id("e127880d6f344412c06e")
    assert not is_valid_job_id("__abcdefgh__") and not is_valid_job_id("abcdéfgh12")
    assert is_valid_job_id("__abcdefgh") and is_valid_job_id("abcdefgh__")


@pytest.mark.parametrize("size", [100 * 1024, 900 * 1024])
def test_a_refused_body_does_not_break_the_connections_next_request(stack: Any, size: int) -> None:
    """Given a body the function refuses without reading (no credentials: 401), larger
    than the 64 KiB gunicorn discards by itself, then the connection still serves its next
    request: the rest of the body was read and dropped, not left to close it."""
    url = urllib.parse.urlsplit(stack.ingress_url)
    first = (f"POST /v1/batches HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n"
             f"Content-Length: {size}\r\n\r\n").encode() + b" " * size
    second = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(first)
        status, rest = read_answer(sock)
        assert status == 401
        sock.sendall(second)
        status, _ = read_answer(sock, rest)
        assert status == 200


def read_answer(sock: socket.socket, raw: bytes = b"") -> tuple[int, bytes]:
    """One answer's status from ``sock`` (by its Content-Length); what followed it."""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the answer"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the answer"
        body += chunk
    return int(head.split()[1]), body[length:]
