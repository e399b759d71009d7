"""A property-based fuzz of the ingress (issue 15, "Done means"): thousands of generated
requests — valid, near-valid and hostile bodies, headers, methods, paths and queries —
through functions-framework's own app over a Kiln of fakes (``fake_ingress.py``).

Every answer must be a status the OpenAPI document (docs/openapi.yaml) lists for the
operation, or one it lists for every request (400, 404, 405, 431; 204 for a CORS
preflight); never a 5xx; errors exactly ``{"error": {"code", "message"}}``; successes
JSON. The run prints how many requests it sent and how long it took.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import functions_framework
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import build_rig

from kiln_dev.stack import REPO
from strategies import bodies, json_like, texts

HERE = Path(__file__).resolve().parent
OPENAPI = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
#: Answers any request may get before an operation runs (OpenAPI info.description).
ANY_REQUEST = {400, 404, 405, 431}
BATCH, BATCHES = 10, 200  # requests per generated example, examples per run
JOB_ID = "fuzzjob"  # replaced by a real job id of the batch's rig


def operations() -> list[tuple[re.Pattern[str], str, set[int]]]:
    ops = []
    for template, methods in OPENAPI["paths"].items():
        pattern = re.escape(template).replace(r"\{jobId\}", "[^/]+").replace(r"\{provider\}", "[^/]+")
        for method, op in methods.items():
            ops.append((re.compile(f"^{pattern}$"), method.upper(),
                        {int(code) for code in op["responses"]}))
    return ops


OPERATIONS = operations()


def documented(method: str, path: str) -> set[int]:
    """The statuses the OpenAPI document allows for this request (leading and trailing
    runs of slashes count as one and none, as werkzeug and the router read them)."""
    path = "/" + path.strip("/")
    allowed = set(ANY_REQUEST)
    for pattern, op_method, statuses in OPERATIONS:
        if pattern.match(path) and (op_method == method or (method == "HEAD" and op_method == "GET")):
            allowed |= statuses
    if method == "OPTIONS":
        allowed.add(204)
    return allowed


# --- strategies ---------------------------------------------------------------------------

header_text = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=40)
segments = st.sampled_from([JOB_ID, "abcdefgh12", "x", "..", "%2F", "%00", "%ff", "a" * 70,
                            "taskserver", "meshy", ""]) | st.text(
    st.characters(max_codepoint=0x2FF, exclude_characters="/?#"), max_size=12).map(
    lambda s: urllib.parse.quote(s, safe=":%"))
paths = st.one_of(
    st.sampled_from(["/v1/jobs", "/v1/jobs/", "/healthz", "/telegram/webhook", "/robots.txt",
                     "/favicon.ico", "/", "/v1", "/v1//jobs"]),
    st.builds(lambda s: f"/v1/jobs/{s}", segments),
    st.builds(lambda s, a: f"/v1/jobs/{s}:{a}", segments,
              st.sampled_from(["cancel", "retry", "delete", ""])),
    st.builds(lambda s: f"/v1/jobs/{s}/timeline", segments),
    st.builds(lambda s: f"/v1/providers/{s}/events", segments),
    st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
queries = st.one_of(st.just(""), st.just(""), st.builds(lambda v: "limit=" + urllib.parse.quote(v), st.one_of(
    st.sampled_from(["1", "20", "100", "0", "-5", "101", "1e30", "2.5", "", "٣", "0x10"]),
    texts.map(lambda t: t.encode("utf-8", "surrogatepass").decode("latin-1")))),
    st.text(st.characters(max_codepoint=0x7F), max_size=20).map(urllib.parse.quote))
ALICE = st.just("Bearer uid:alice")
authorizations = st.one_of(ALICE, ALICE, ALICE, st.sampled_from(
    ["Bearer uid:bob", "Bearer uid:telegram:1", "Bearer uid:api:x", "Bearer uid:a/b",
     "Bearer uid:..", "Bearer uid:", "Bearer", "Basic x", "bearer  uid:alice", ""]),
    header_text, st.none())
JSON_TYPE = st.just("application/json")
content_types = st.one_of(JSON_TYPE, JSON_TYPE, JSON_TYPE, st.sampled_from(
    ["application/json; charset=utf-8", "text/plain", "application/json; charset=latin-1",
     "multipart/form-data; boundary=x", ""]), header_text, st.none())
keys = st.one_of(st.none(), st.none(), st.uuids().map(str),
                 st.sampled_from(["k", "k" * 256, " k", "ключ"]), header_text)

letters = st.text(st.characters(categories=["L", "N", "Zs", "P", "So"]), min_size=1, max_size=80)
valid_options = {
    "image": st.fixed_dictionaries({}, optional={
        "seed": st.integers(0, 2**31 - 1) | st.integers(0, 2**31 - 1).map(float),
        "style": letters.map(lambda t: t[:64]),
        "aspectRatio": st.sampled_from(["1:1", "4:3", "3:4", "16:9", "9:16", "2:1"])}),
    "model": st.fixed_dictionaries({}, optional={
        "texture": st.booleans(), "seed": st.integers(-1, 2**31),
        "imageUrl": st.sampled_from([
            "https://img.example.org/cat.png", "http://img.example.org/cat.png",
            "https://169.254.169.254/", "https://u:p@img.example.org/", "https://10.0.0.1/a",
            "https://[::1]/", "https://2130706433/", "ftp://x.example/a", "https://"])}),
}
near_valid_bodies = st.sampled_from(["image", "model"]).flatmap(lambda kind: st.fixed_dictionaries(
    {"kind": st.just(kind), "prompt": letters | texts}, optional={"options": valid_options[kind]}))


def encode(body: Any, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.builds(encode, near_valid_bodies, st.booleans()),
    st.builds(encode, near_valid_bodies, st.booleans()),
    st.builds(encode, bodies | json_like, st.booleans()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b"null", b'{"kind": "image", "prompt": "x"}' * 2,
                     b'{"kind": "image", "prompt": "\\ud800"}', b"[" * 3000 + b"]" * 3000,
                     b'{"kind": "image", "prompt": NaN}', b"\xef\xbb\xbf{}",
                     b'{"kind": "image", "prompt": "x", "prompt": "y"}',
                     b'{"update_id": 1, "message": {"text": "/start"}}',
                     b'{"kind": "image", "prompt": "' + b"a" * 70_000 + b'"}']),
)
api_calls = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/jobs")),
    st.tuples(st.just("POST"), st.just("/v1/jobs")),
    st.tuples(st.just("GET"), st.just("/v1/jobs")),
    st.tuples(st.sampled_from(["GET", "HEAD"]), st.just(f"/v1/jobs/{JOB_ID}")),
    st.tuples(st.sampled_from(["GET", "HEAD"]), st.just(f"/v1/jobs/{JOB_ID}/timeline")),
    st.tuples(st.just("POST"), st.sampled_from([f"/v1/jobs/{JOB_ID}:cancel",
                                                f"/v1/jobs/{JOB_ID}:retry"])),
    st.tuples(st.sampled_from(["GET", "HEAD", "POST"]), st.just("/healthz")),
)
methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                           "PROPFIND"])
calls = st.one_of(api_calls, api_calls, api_calls, st.tuples(methods, paths))
requests = st.fixed_dictionaries({
    "call": calls, "query": queries, "body": raw_bodies,
    "headers": st.fixed_dictionaries({
        "Authorization": authorizations, "Content-Type": content_types,
        "Idempotency-Key": keys}, optional={
        "Origin": st.sampled_from(["https://app.example", "null"]),
        "X-Telegram-Bot-Api-Secret-Token": header_text, "Content-Length": st.sampled_from(
            ["0", "5", "999999999", "-1", "x"]),
        "webhook-id": header_text, "webhook-signature": header_text,
        "webhook-timestamp": st.integers(-2**40, 2**40).map(str)}),
})


# --- the run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Any:
    app = functions_framework.create_app(target="ingress", source=str(HERE / "fake_ingress.py"),
                                         signature_type="http")
    return app.test_client()


def check(response: Any, method: str, path: str) -> None:
    status = response.status_code
    assert status < 500, (status, response.data[:300])
    assert status in documented(method, path), (status, method, path, response.data[:300])
    if method == "HEAD" or status == 204:
        return
    assert response.mimetype == "application/json", (status, response.data[:200])
    payload = json.loads(response.data)
    if status >= 400:
        assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
        assert isinstance(payload["error"]["code"], str) and payload["error"]["message"]


def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(
        client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake = sys.modules["fake_ingress"]
    sent = 0

    @settings(max_examples=BATCHES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(requests, min_size=BATCH, max_size=BATCH))
    def run(batch: list[dict[str, Any]]) -> None:
        nonlocal sent
        fake.RIG = build_rig()  # fresh jobs per batch; one of alice's to aim at
        job_id = fake.RIG.submit()
        for request in batch:
            # PATH_INFO as a server decodes it ("//x" stays a path, not a host)
            method, raw_path = request["call"]
            path = urllib.parse.unquote_to_bytes(raw_path.replace(JOB_ID, job_id))
            headers = {k: v for k, v in request["headers"].items() if v is not None}
            response = client.open("/", method=method, query_string=request["query"],
                                   data=request["body"], headers=headers,
                                   environ_overrides={"PATH_INFO": path.decode("latin-1")})
            sent += 1
            check(response, method, path.decode("utf-8", "replace"))

    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nHTTP fuzz: {sent} requests, none 5xx or undocumented, {elapsed:.1f} s")
    assert sent >= BATCH * BATCHES
