"""Revoked and disabled Firebase users are refused, and the answer stays fast (issue 15,
item 12): firebase-admin's own ``check_revoked`` against a stand-in of Firebase Auth's
user lookup (Identity Toolkit ``accounts:lookup``, the endpoint firebase-admin calls, on
127.0.0.1 through ``FIREBASE_AUTH_EMULATOR_HOST``), with a fake clock for the cache."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kiln.adapters.firebase_auth import FirebaseAuth, emulator_id_token, firebase_app
from kiln.core.errors import RequestError, RetryableError
from kiln.settings import Settings

PROJECT = "demo-auth"


class AccountsServer(ThreadingHTTPServer):
    """``POST …/projects/{p}/accounts:lookup``: the users in ``users`` (by uid), counted."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Lookup)
        self.users: dict[str, dict[str, Any]] = {}
        self.lookups: list[str] = []
        self.failing = False
        self.forbidden = False  # the caller's account may not look users up (IAM)


class _Lookup(BaseHTTPRequestHandler):
    server: AccountsServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith(f"/projects/{PROJECT}/accounts:lookup"), self.path
        [uid] = body["localId"]
        self.server.lookups.append(uid)
        if self.server.forbidden:
            self._answer(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                         "message": "Caller does not have permission"}})
            return
        if self.server.failing:
            # 502: firebase-admin does not retry it itself (its 500/503 retries back off
            # for seconds), and it is as unreachable to us as any.
            self._answer(502, {"error": {"code": 502, "message": "BAD_GATEWAY"}})
            return
        user = self.server.users.get(uid)
        self._answer(200, {"kind": "identitytoolkit#GetAccountInfoResponse",
                           **({"users": [{"localId": uid, **user}]} if user is not None else {})})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def accounts(monkeypatch: pytest.MonkeyPatch) -> Iterator[AccountsServer]:
    server = AccountsServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", f"127.0.0.1:{server.server_address[1]}")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(accounts: AccountsServer, clock: Clock) -> FirebaseAuth:
    app = firebase_app(Settings(env="local", project=PROJECT))
    return FirebaseAuth(app, check_revoked=True, cache_seconds=60.0, clock=clock)


def bearer(uid: str, **claims: Any) -> str:
    return f"Bearer {emulator_id_token(uid, PROJECT, **claims)}"


def refusal(auth: FirebaseAuth, header: str) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        auth.verify(header)
    return info.value.status, info.value.code


def test_a_good_user_is_looked_up_once_per_token_within_the_cache_time(
        auth: FirebaseAuth, accounts: AccountsServer, clock: Clock) -> None:
    accounts.users["alice"] = {"disabled": False}
    token = bearer("alice")
    assert [auth.verify(token) for _ in range(5)] == ["alice"] * 5
    assert accounts.lookups == ["alice"]
    clock.now += 61
    assert auth.verify(token) == "alice"
    assert accounts.lookups == ["alice", "alice"]


def test_a_revoked_session_is_refused(auth: FirebaseAuth, accounts: AccountsServer,
                                      clock: Clock) -> None:
    # given alice signed in, then her sessions were revoked (validSince after the token)
    issued = int(time.time()) - 100
    token = bearer("alice", iat=issued, auth_time=issued)
    accounts.users["alice"] = {"disabled": False}
    assert auth.verify(token) == "alice"
    accounts.users["alice"] = {"disabled": False, "validSince": str(issued + 50)}
    # then within the cache time the token still passes; after it, it is refused
    clock.now += 61
    assert refusal(auth, token) == (401, "token_revoked")
    # and a token issued after the revocation is taken
    assert auth.verify(bearer("alice")) == "alice"


def test_a_disabled_user_is_refused(auth: FirebaseAuth, accounts: AccountsServer) -> None:
    accounts.users["bob"] = {"disabled": True}
    assert refusal(auth, bearer("bob")) == (403, "user_disabled")


def test_a_deleted_user_is_refused(auth: FirebaseAuth, accounts: AccountsServer) -> None:
    assert refusal(auth, bearer("ghost")) == (401, "unauthenticated")


def test_auth_unreachable_is_busy_not_a_refusal(auth: FirebaseAuth,
                                                accounts: AccountsServer) -> None:
    accounts.failing = True
    with pytest.raises(RetryableError) as info:
        auth.verify(bearer("alice"))
    assert info.value.code == "auth_unavailable"


def test_a_lookup_the_account_may_not_make_is_busy_and_names_the_role(
        auth: FirebaseAuth, accounts: AccountsServer, caplog: pytest.LogCaptureFixture) -> None:
    """Given an ingress whose account lacks roles/firebaseauth.viewer (Auth answers 403),
    then the caller gets the retryable auth_unavailable (not a 500, not a refusal of
    their sign-in) and the log says which role is missing."""
    accounts.forbidden = True
    with pytest.raises(RetryableError) as info:
        auth.verify(bearer("alice"))
    assert info.value.code == "auth_unavailable"
    assert any("roles/firebaseauth.viewer" in record.getMessage() for record in caplog.records)


def test_firebase_calls_time_out_within_a_request(accounts: AccountsServer) -> None:
    """firebase-admin's own default is 120 s per call, beyond a request's or a sweep's
    time: the app's calls (user lookup, token keys, FCM) are bounded by HTTP_TIMEOUT."""
    from kiln.adapters.firebase_auth import HTTP_TIMEOUT
    app = firebase_app(Settings(env="local", project=PROJECT))
    assert app.options.get("httpTimeout") == HTTP_TIMEOUT <= 15


def test_a_refused_token_is_not_cached(auth: FirebaseAuth, accounts: AccountsServer) -> None:
    accounts.users["carol"] = {"disabled": True}
    token = bearer("carol")
    assert refusal(auth, token) == (403, "user_disabled")
    accounts.users["carol"] = {"disabled": False}
    assert auth.verify(token) == "carol"


def test_the_cache_never_outlives_the_token(auth: FirebaseAuth, accounts: AccountsServer,
                                            clock: Clock) -> None:
    accounts.users["dan"] = {"disabled": False}
    token = bearer("dan", exp=int(clock.now) + 10)
    assert auth.verify(token) == "dan"
    clock.now += 11  # the cache's 60 s are not over, the token's life is: asked again
    auth.verify(token)
    assert accounts.lookups == ["dan", "dan"]


def test_a_forged_plan_claim_is_ignored_in_local_mode(accounts: AccountsServer) -> None:
    """Given the local stack's composition (unsigned tokens, anyone can write a claim),
    when a token claims plan "pro", then the caller has no plan from it; a signed-token
    verifier (deployed) does take the claim."""
    from kiln.compose import Services

    host = f"127.0.0.1:{accounts.server_address[1]}"
    local = Services(Settings(env="local", project=PROJECT, auth_emulator_host=host))
    forged = bearer("mallory", plan="pro")
    assert local.auth.identify(forged).uid == "mallory"
    assert local.auth.identify(forged).plan is None
    trusting = FirebaseAuth(firebase_app(Settings(env="local", project=PROJECT)),
                            check_revoked=False, trust_claims=True)
    assert trusting.identify(forged).plan == "pro"
