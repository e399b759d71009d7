"""No request ends in a 5xx or an HTML page (issue 15, item 7): hostile bodies, headers
and paths through functions-framework's own app, and the server's refusals (gunicorn's)
in the contract's shape."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from kiln.http import framework

HERE = Path(__file__).resolve().parent
JSON = {"Content-Type": "application/json", "Authorization": "Bearer uid:alice"}


@pytest.fixture(scope="module")
def client() -> Any:
    app = functions_framework.create_app(target="ingress", source=str(HERE / "fake_ingress.py"),
                                         signature_type="http")
    return app.test_client()


@pytest.fixture
def jobs() -> Any:
    rig = sys.modules["fake_ingress"].RIG
    return lambda: rig.store.find(uid="alice", limit=100)


def error_of(response: Any) -> dict[str, str]:
    assert response.mimetype == "application/json", response.data[:200]
    error = response.get_json()["error"]
    assert isinstance(error["code"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def nested(depth: int) -> bytes:
    return ('{"kind": "image", "prompt": "x", "options": {"seed": '
            + "[" * depth + "]" * depth + "}}").encode()


@pytest.mark.parametrize("depth", [100, 900, 5000, 100_000])
def test_deeply_nested_json_is_400(client: Any, jobs: Any, depth: int) -> None:
    before = len(jobs())
    response = client.post("/v1/jobs", data=nested(depth), headers=JSON)
    assert response.status_code in (400, 413)
    assert error_of(response)["code"] in ("invalid_json", "invalid_options", "body_too_large")
    assert len(jobs()) == before


@pytest.mark.parametrize("body", [
    '{"kind": "image", "prompt": "cube \\ud800"}',
    '{"kind": "image\\udfff", "prompt": "cube"}',
    '{"kind": "image", "prompt": "cube", "options": {"style": "\\udc00"}}',
    '{"kind": "image", "prompt": "cube", "options": {"\\ud800": 1}}',
    '{"kind": "model", "prompt": "cube", "options": {"imageUrl": "https://a.example/\\ud800"}}',
    '{"\\ud800": "image", "prompt": "cube"}',
])
def test_a_lone_surrogate_in_any_string_is_400(client: Any, jobs: Any, body: str) -> None:
    before = len(jobs())
    response = client.post("/v1/jobs", data=body.encode(), headers=JSON)
    assert response.status_code == 400
    error_of(response)
    assert len(jobs()) == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_invalid_json(client: Any, constant: str) -> None:
    body = f'{{"kind": "image", "prompt": "x", "options": {{"seed": {constant}}}}}'
    response = client.post("/v1/jobs", data=body.encode(), headers=JSON)
    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_json")


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_415_not_read_as_json(client: Any, jobs: Any, coding: str) -> None:
    """Given a body that says it is compressed, then it is refused (415) rather than read
    as if it were not, and no job is made."""
    body = b'{"kind": "image", "prompt": "x"}'
    response = client.post("/v1/jobs", data=body, headers={**JSON, "Content-Encoding": coding})
    assert (response.status_code, error_of(response)["code"]) == (415, "unsupported_media_type")
    assert jobs() == []


def test_a_10kb_idempotency_key_is_400(client: Any) -> None:
    response = client.post("/v1/jobs", data=b'{"kind": "image", "prompt": "x"}',
                           headers={**JSON, "Idempotency-Key": "k" * 10_240})
    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_idempotency_key")


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico", "//x", "//x/y"])
def test_the_frameworks_own_routes_answer_json_404(client: Any, path: str) -> None:
    # PATH_INFO as a server passes it (the test client would read "//x" as a host)
    response = client.get("/", environ_overrides={"PATH_INFO": path})
    assert (response.status_code, error_of(response)["code"]) == (404, "not_found")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "PROPFIND"])
def test_any_method_is_a_json_405_with_allow(client: Any, method: str) -> None:
    response = client.open("/v1/jobs", method=method, headers=JSON)
    assert (response.status_code, error_of(response)["code"]) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize("path", ["/v1/jobs/%00", "/v1/jobs/..%2F..", "/%ff%fe", "/v1//jobs",
                                  "/" + "a" * 20_000, "/v1/jobs/x:cancel:retry"])
def test_hostile_paths_are_json_4xx(client: Any, path: str) -> None:
    response = client.get(path, headers=JSON)
    assert 400 <= response.status_code < 500
    error_of(response)


def test_chunked_and_content_length_together_creates_nothing(client: Any, jobs: Any) -> None:
    # gunicorn refuses this before the app (test_server_refusals); in process, werkzeug
    # ignores the length of a chunked body, and the app still answers in shape.
    before = len(jobs())
    response = client.post("/v1/jobs", data=b"5\r\nhello\r\n0\r\n\r\n",
                           headers={**JSON, "Transfer-Encoding": "chunked", "Content-Length": "3"})
    assert 400 <= response.status_code < 500
    error_of(response)
    assert len(jobs()) == before


def test_an_exception_escaping_the_function_is_a_json_500(client: Any) -> None:
    # The one 5xx left: a bug. Even then the answer keeps the contract's shape.
    rig = sys.modules["fake_ingress"].RIG
    store = rig.services.store

    class Broken:
        def recent(self, *_a: Any) -> Any:
            raise RuntimeError("bug")

    rig.services.store = Broken()
    try:
        response = client.get("/v1/jobs", headers=JSON)
    finally:
        rig.services.store = store
    assert (response.status_code, error_of(response)["code"]) == (500, "internal")


@pytest.mark.parametrize(("status", "expected"), [
    (400, (400, "bad_request")), (431, (431, "headers_too_large")), (414, (414, "uri_too_long")),
    (501, (400, "bad_request")), (403, (403, "forbidden")),
])
def test_gunicorns_error_page_is_json(status: int, expected: tuple[int, str]) -> None:
    # The function gunicorn's workers call for every request they cannot parse.
    left, right = socket.socketpair()
    with left, right:
        framework.write_error(left, status, "Bad Request", "Invalid header '<script>'")
        raw = right.recv(65536).decode("latin-1")
    head, _, body = raw.partition("\r\n\r\n")
    assert head.split("\r\n")[0].startswith(f"HTTP/1.1 {expected[0]} ")
    assert "Content-Type: application/json" in head
    assert f"Content-Length: {len(body)}" in head
    assert json.loads(body)["error"]["code"] == expected[1]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE"])
def test_healthz_answers_only_get_and_head(client: Any, method: str) -> None:
    assert client.get("/healthz").status_code == client.head("/healthz").status_code == 200
    response = client.open("/healthz", method=method)
    assert (response.status_code, error_of(response)["code"]) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(("path", "methods"), [
    ("/v1/jobs", "GET, POST, OPTIONS"),
    ("/v1/jobs/job12345:cancel", "POST, OPTIONS"),
    ("/v1/webhooks/ep123456", "DELETE, OPTIONS"),
    ("/healthz/", "GET, OPTIONS"),
])
def test_a_cors_preflight_names_the_methods_its_path_serves(
        client: Any, monkeypatch: pytest.MonkeyPatch, path: str, methods: str) -> None:
    """Given an allowed origin, a preflight answers 204 with the path's own methods (a
    browser's DELETE of a webhook endpoint is allowed, not refused as GET/POST only)."""
    from rig import build_rig
    monkeypatch.setattr(sys.modules["fake_ingress"], "RIG", build_rig(cors_origins="*"))
    response = client.options(path, headers={"Origin": "https://app.example",
                                              "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Methods"] == methods
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


@pytest.mark.parametrize("path", ["/nowhere", "/v1/jobs/job12345/else", "/v1//jobs"])
def test_a_cors_preflight_for_no_endpoint_is_404(
        client: Any, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    from rig import build_rig
    monkeypatch.setattr(sys.modules["fake_ingress"], "RIG", build_rig(cors_origins="*"))
    response = client.options(path, headers={"Origin": "https://app.example"})
    assert (response.status_code, error_of(response)["code"]) == (404, "not_found")


@pytest.mark.parametrize(("listed", "allowed"), [("*", False), ("https://app.example,null", True)])
def test_the_opaque_null_origin_is_allowed_only_when_listed(
        client: Any, monkeypatch: pytest.MonkeyPatch, listed: str, allowed: bool) -> None:
    """``*`` covers every site, not ``Origin: null`` (a sandboxed frame or a file: page)."""
    from rig import build_rig
    monkeypatch.setattr(sys.modules["fake_ingress"], "RIG", build_rig(cors_origins=listed))
    response = client.get("/healthz", headers={"Origin": "null"})
    assert response.headers.get("Access-Control-Allow-Origin") == ("null" if allowed else None)
