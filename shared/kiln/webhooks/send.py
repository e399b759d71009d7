"""One signed POST to a receiver, under the fetch rules (``kiln.providers.fetch``).

The URL is checked (https, every address public; ``http`` and loopback only in local
mode; a form the HTTP client can send: :func:`client_refusal`) and the connection pinned
to the checked address; redirects are not followed (a 3xx is a failed attempt). The
whole attempt has :data:`RECEIVER_TIMEOUT` seconds from its start: the connect, the TLS
handshake and every read of the answer end by that deadline (each send of the small
request is given what is left of it; the address lookup before connecting is the
resolver's own), so a receiver that dribbles its answer fails the attempt as a
``timeout`` like one that never answers. The signature is the ``standardwebhooks``
library's, over ``{id}.{timestamp}.{body}``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from kiln.core import urls
from kiln.core.errors import PermanentError, RetryableError
from kiln.providers.fetch import (
    FetchPolicy,
    Resolver,
    check_url,
    pin_host,
    pinned_client,
    system_resolve,
)
from kiln.webhooks.model import RECEIVER_TIMEOUT

USER_AGENT = "Kiln-Webhooks/1"


@dataclass(frozen=True)
class SendResult:
    """What one attempt got: the receiver's status (None when it never answered)."""

    status: int | None
    error: str = ""  # "timeout", "connection", "dns", "redirect", "http_<status>", "refused"
    detail: str = ""
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        return self.error == "refused"


def url_policy(*, allow_local: bool, timeout: float = RECEIVER_TIMEOUT,
               unknown_host_final: bool = False) -> FetchPolicy:
    """At registration a host that does not exist is refused; at delivery it is a failed
    attempt (DNS may be fixed before the schedule ends)."""
    return FetchPolicy(hosts=None, allow_local=allow_local, refused_code="invalid_webhook_url",
                       unknown_host_final=unknown_host_final, connect_timeout=min(timeout, 10.0),
                       read_timeout=timeout, max_redirects=0)


def check_webhook_url(url: str, *, allow_local: bool, resolve: Resolver = system_resolve) -> None:
    """Refuse a webhook URL the delivery would refuse (at registration: a 400).

    Raises:
        PermanentError: ``invalid_webhook_url`` with a message the caller can act on.
    """
    why = "it is longer than 2000 characters" if len(url) > 2000 else \
        urls.form_refusal(url, allow_local=allow_local) or client_refusal(url)
    if why:
        raise PermanentError(f"The webhook URL was refused: {why}.", code="invalid_webhook_url")
    check_url(url, url_policy(allow_local=allow_local, unknown_host_final=True), resolve)


def client_refusal(url: str) -> str:
    """Why the HTTP client cannot send to ``url`` as written ("" when it can): what the
    rules of ``kiln.core.urls`` let through that httpx refuses, such as a host that is
    not a valid international domain name (``xn--zz.example``)."""
    try:
        httpx.URL(url).host  # noqa: B018 - the host is decoded when read
    except (httpx.InvalidURL, UnicodeError):  # (IDNAError is a UnicodeError)
        return "it is not a valid URL"
    return ""


def signed_headers(secret: str, message_id: str, timestamp: dt.datetime, body: bytes) -> dict[str, str]:
    signature = Webhook(secret).sign(message_id, timestamp, body)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": USER_AGENT}


def resolve_by(resolve: Resolver, deadline: float) -> Resolver:
    """``resolve`` that gives up at ``deadline`` (``time.monotonic()``): the system's
    lookup has no timeout of its own (its retries and search domains can outlast the
    attempt's lease, and a second attempt would then overlap this one). The lookup runs on
    a daemon thread, left to finish on its own when it is given up on."""
    def bounded(host: str, port: int) -> list[str]:
        answer: list[tuple[bool, Any]] = []
        done = threading.Event()

        def run() -> None:
            try:
                answer.append((True, resolve(host, port)))
            except BaseException as exc:  # handed to the caller below
                answer.append((False, exc))
            done.set()

        threading.Thread(target=run, daemon=True, name="webhook-dns").start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise RetryableError(f"The host {host!r} could not be resolved in time.",
                                 code="fetch_unavailable")
        ok, value = answer[0]
        if not ok:
            raise value
        return list(value)

    return bounded


def post(url: str, body: bytes, headers: dict[str, str], *, allow_local: bool,
         timeout: float = RECEIVER_TIMEOUT, resolve: Resolver = system_resolve) -> SendResult:
    """POST ``body`` once; never raises for the receiver's or the network's faults."""
    started = time.monotonic()

    def done(status: int | None, error: str = "", detail: str = "") -> SendResult:
        return SendResult(status, error, detail[:200], round((time.monotonic() - started) * 1000, 1))

    policy = url_policy(allow_local=allow_local, timeout=timeout)
    # A URL stored before a rule existed may break one: refused, so its delivery ends.
    why = urls.form_refusal(url, allow_local=allow_local) or client_refusal(url)
    if why:
        return done(None, "refused", f"The webhook URL was refused: {why}.")
    try:
        addresses = check_url(url, policy, resolve_by(resolve, started + timeout))
    except PermanentError as exc:
        return done(None, "refused", exc.message)
    except RetryableError as exc:
        return done(None, "dns", exc.message)
    client, pins = pinned_client(policy, deadline=started + timeout)
    try:
        pins[pin_host(url)] = str(addresses[0])
        # Streamed and never read: only the status counts, so a huge answer costs nothing.
        with client, client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
    except httpx.TimeoutException:
        return done(None, "timeout", f"no complete answer within {timeout:g} s of the attempt's start")
    except httpx.HTTPError as exc:
        return done(None, "connection", type(exc).__name__)
    except (httpx.InvalidURL, UnicodeError) as exc:  # (checked above: never raised, never stuck)
        return done(None, "refused", f"The webhook URL was refused: {type(exc).__name__}.")
    if 300 <= status < 400:
        return done(status, "redirect", "redirects are not followed")
    if status >= 300:
        return done(status, f"http_{status}")
    return done(status)
