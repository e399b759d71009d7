"""What gunicorn (the server functions-framework runs) refuses before the function is
called is answered in the contract's shape too (issue 15, item 7): raw HTTP/1.1 over a
socket to the local stack's ingress, as a hostile client would send it."""

from __future__ import annotations

import json
import socket
import urllib.parse
from typing import Any

import pytest

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
