"""Safe fetching: download a provider's result, or check a user's URL, without SSRF.

A URL passes only when (the lookup-free rules are ``kiln.core.urls``'s, also applied to
``options.imageUrl`` at submit):

- its scheme is ``https`` (``http`` only to a loopback host, only when ``KILN_ENV=local``)
  and it carries no user name or password;
- its host is one the caller expects (a provider's own hosts plus
  ``KILN_ALLOWED_FETCH_HOSTS``; entries are ``host`` or ``*.domain``), when a host list
  is given — user URLs have none: any public host will do;
- every address the host resolves to is public: never private, loopback (outside local
  mode), link-local (``169.254.169.254``), multicast, reserved, unspecified or shared,
  IPv4-mapped IPv6 included.

The download then connects to the address that was checked (the resolution is pinned
in the connection pool, while the Host header and TLS SNI keep the name), so a DNS
answer that changes between the check and the connect cannot redirect it. Redirects
are followed by hand, at most ``max_redirects``, each hop checked again. The size is
capped up front by ``Content-Length`` and while streaming. Each connect and read has
its timeout; a download must also keep moving (``min_progress`` bytes in each
``read_timeout`` seconds spent waiting; ``kiln.paced``); a :func:`pinned_client` can have
a deadline that every connect, handshake, write and read ends by. Proxies from the
environment are ignored (a proxy would bypass the pin).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import socket
import ssl
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from kiln.core import urls
from kiln.core.errors import PermanentError, RetryableError
from kiln.core.urls import Address, forbidden_reason
from kiln.paced import Pace, paced_transport
from kiln.providers.http import retry_after_seconds
from kiln.settings import Settings

CHUNK_BYTES = 1024 * 1024
#: What a result link answers once it has expired (a signed URL: 400 or 403 by its
#: vendor; a CDN: 404 or 410): the job is released, and its next attempt fetches the
#: task's fresh link; its attempts bound a link that never works.
EXPIRED = frozenset({400, 401, 403, 404, 410})
#: ``resolve(host, port)`` → the IP addresses ``host`` stands for.
Resolver = Callable[[str, int], list[str]]


class HostNotFound(RetryableError):
    """DNS says the name does not exist (NXDOMAIN, no address): final for a user's URL,
    retried for a provider's own host."""


#: getaddrinfo's answers that mean "no such name", not "DNS is unreachable".
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise HostNotFound("The host name is not valid.", code="fetch_unavailable") from exc
    except socket.gaierror as exc:
        kind = HostNotFound if exc.errno in _NO_SUCH_NAME else RetryableError
        raise kind("The result's host could not be resolved.",
                   code="fetch_unavailable") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_hosts(text: str) -> tuple[str, ...]:
    """``KILN_ALLOWED_FETCH_HOSTS``: hosts separated by commas or spaces."""
    return tuple(h.strip().lower() for h in text.replace(",", " ").split() if h.strip())


@dataclass(frozen=True)
class FetchPolicy:
    """Where a download may go and how much it may take.

    Attributes:
        hosts: the hosts allowed (``host`` or ``*.domain``); None allows any public host.
        allow_local: ``http`` and loopback addresses are allowed (``KILN_ENV=local`` only).
        max_bytes: the largest body accepted.
        read_timeout: the longest wait for any read; also the span of waiting (time
            spent between reads not counted) in which a download must bring
            ``min_progress`` bytes (0: no floor), so a server dripping bytes is cut.
        refused_code: the error code when a URL is refused.
        unknown_host_final: a host that does not exist refuses the URL (a user's URL)
            instead of being retried as a DNS fault.
    """

    hosts: tuple[str, ...] | None
    allow_local: bool = False
    max_bytes: int = 2 * 1024**3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_redirects: int = 5
    min_progress: int = 1024 * 1024
    refused_code: str = "unsafe_result_url"
    unknown_host_final: bool = False

    @classmethod
    def for_provider(cls, settings: Settings, hosts: Iterable[str], **kw: Any) -> FetchPolicy:
        """A provider's result policy: its own hosts plus ``KILN_ALLOWED_FETCH_HOSTS``."""
        allowed = tuple(h.lower() for h in hosts if h) + parse_hosts(settings.allowed_fetch_hosts)
        return cls(hosts=allowed, allow_local=settings.local,
                   max_bytes=settings.max_artifact_bytes, **kw)

    def host_allowed(self, host: str) -> bool:
        return self.hosts is None or any(
            host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in self.hosts)


def check_user_url(url: str, settings: Settings, resolve: Resolver = system_resolve) -> str:
    """Check a URL a user gave (``options.imageUrl``) before a provider is asked to fetch it.

    Raises:
        PermanentError: ``invalid_image_url`` with a message the user can act on.
    """
    policy = FetchPolicy(hosts=None, allow_local=settings.local, refused_code="invalid_image_url",
                         unknown_host_final=True)
    check_url(url, policy, resolve)
    return url


def check_url(url: str, policy: FetchPolicy, resolve: Resolver = system_resolve) -> list[Address]:
    """The checked addresses of ``url``'s host (the rules of ``kiln.core.urls``, then
    every address the host resolves to).

    Raises:
        PermanentError: ``policy.refused_code`` when the URL is not allowed, or (when
            ``policy.unknown_host_final``) its host does not exist.
    """
    why = urls.form_refusal(url, allow_local=policy.allow_local)
    if why:
        _refuse(policy, why)
    host = urls.host_of(url)
    if not policy.host_allowed(host):
        _refuse(policy, f"the host {host[:100]} is not one this service downloads from")
    address = urls.literal(host)
    if address is not None:
        addresses = [address]
    else:
        parts = urllib.parse.urlsplit(url)
        try:
            names = resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except HostNotFound:
            if not policy.unknown_host_final:
                raise
            _refuse(policy, f"its host {host[:100]} does not exist")
        addresses = [ipaddress.ip_address(name.split("%", 1)[0]) for name in names]
    if not addresses:
        _refuse(policy, "its host has no address")
    for address in addresses:
        reason = forbidden_reason(address, policy.allow_local)
        if reason:
            _refuse(policy, f"it points to a {reason} address")
    return addresses


_WHAT = {"invalid_image_url": "image link", "invalid_webhook_url": "webhook URL"}


def _refuse(policy: FetchPolicy, why: str) -> Any:
    what = _WHAT.get(policy.refused_code, "result link")
    raise PermanentError(f"The {what} was refused: {why}.", code=policy.refused_code)


# --- downloading ----------------------------------------------------------------------


@dataclass
class Download:
    """An open download: its headers now, its body as chunks (the connection closes after)."""

    url: str
    content_type: str
    size: int | None
    chunks: Iterable[bytes]


def open_stream(url: str, policy: FetchPolicy, *, resolve: Resolver = system_resolve,
                headers: dict[str, str] | None = None) -> Download:
    """Open ``url`` for streaming, following redirects hop by hop.

    Raises:
        PermanentError: refused URL (``policy.refused_code``), too large
            (``artifact_too_large``), rejected (``result_unavailable``).
        RetryableError: network faults, timeouts, 429 and 5xx (``fetch_unavailable``); a
            link that answers as an expired one does (``EXPIRED``: ``result_unavailable``).
    """
    pace = Pace(floor=policy.min_progress, window=policy.read_timeout)
    client, pins = paced_client(policy, pace)
    try:
        response = _follow(client, pins, url, policy, resolve, headers or {})
        length = _content_length(response)
        if length is not None and length > policy.max_bytes:
            raise PermanentError(
                f"The result is larger than the {policy.max_bytes:,}-byte limit.",
                code="artifact_too_large")
    except BaseException:
        client.close()
        raise
    content_type = response.headers.get("content-type", "application/octet-stream")
    pace.restart()  # the body's own window: the wait for the answer is the timeouts' job
    return Download(str(response.url), content_type, length,
                    _Body(client, response, policy.max_bytes))


def _follow(client: httpx.Client, pins: dict[str, str], url: str, policy: FetchPolicy,
            resolve: Resolver, headers: dict[str, str]) -> httpx.Response:
    for _hop in range(policy.max_redirects + 1):
        addresses = check_url(url, policy, resolve)
        pins[pin_host(url)] = str(addresses[0])
        try:
            response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        except httpx.TimeoutException as exc:
            raise RetryableError("Downloading the result timed out.", code="fetch_timeout") from exc
        except httpx.HTTPError as exc:
            raise RetryableError("The result could not be downloaded.",
                                 code="fetch_unavailable") from exc
        if response.status_code in (301, 302, 303, 307, 308):
            location = response.headers.get("location", "")
            response.close()
            if not location:
                raise PermanentError("The result link redirects nowhere.", code="result_unavailable")
            url = urllib.parse.urljoin(url, location)
            continue
        if response.status_code == 200:
            return response
        response.close()
        status = response.status_code
        if status == 429 or status >= 500:
            raise RetryableError("The result's server is busy; try again later.",
                                 code="fetch_unavailable",
                                 retry_after=retry_after_seconds(response.headers))
        if status in EXPIRED:  # another attempt asks the provider for a fresh link
            raise RetryableError(f"The result could not be downloaded (HTTP {status}); its link "
                                 "may have expired.", code="result_unavailable")
        raise PermanentError(f"The result could not be downloaded (HTTP {status}).",
                             code="result_unavailable")
    raise PermanentError(f"The result link redirects more than {policy.max_redirects} times.",
                         code=policy.refused_code)


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    if raw is None or "content-encoding" in response.headers:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class _Body:
    """The body's chunks, counted against the cap; closes the connection when done."""

    def __init__(self, client: httpx.Client, response: httpx.Response, max_bytes: int) -> None:
        self._client, self._response, self._max_bytes = client, response, max_bytes

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        try:
            for chunk in _decoded(self._response):
                total += len(chunk)
                if total > self._max_bytes:
                    raise PermanentError(
                        f"The result is larger than the {self._max_bytes:,}-byte limit.",
                        code="artifact_too_large")
                yield chunk
        except httpx.TimeoutException as exc:
            raise RetryableError("Downloading the result timed out or stalled.",
                                 code="fetch_timeout") from exc
        except httpx.HTTPError as exc:
            raise RetryableError("The result download broke off.", code="fetch_unavailable") from exc
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()
        self._client.close()

    def __del__(self) -> None:
        self.close()


#: Encodings a result may come in (asked for in ``Accept-Encoding``), each decoded here at
#: most CHUNK_BYTES at a time: httpx decodes each read whole, so a few hundred bytes of a
#: stacked gzip could grow to gigabytes before the size cap counted one.
ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def _decoded(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes, decoded from its ``Content-Encoding`` in chunks of at most
    CHUNK_BYTES (``identity``, or one of ENCODINGS).

    Raises:
        PermanentError: ``result_unavailable``: an encoding Kiln did not ask for.
        RetryableError: ``fetch_unavailable``: a compressed stream that breaks off.
    """
    named = [part.strip().lower() for part in
             response.headers.get("content-encoding", "").split(",")]
    encodings = [name for name in named if name and name != "identity"]
    if not encodings:
        yield from response.iter_raw(CHUNK_BYTES)
        return
    if len(encodings) > 1 or encodings[0] not in ENCODINGS:
        raise PermanentError("The result came in an encoding this service does not take "
                             f"({', '.join(encodings)[:60]}).", code="result_unavailable")
    decoder = zlib.decompressobj(ENCODINGS[encodings[0]])
    try:
        for raw in response.iter_raw(CHUNK_BYTES):
            data = decoder.decompress(raw, CHUNK_BYTES)
            while data:
                yield data
                data = decoder.decompress(decoder.unconsumed_tail, CHUNK_BYTES)
        if not decoder.eof:
            raise zlib.error("the stream ends early")
    except zlib.error as exc:
        raise RetryableError("The result download arrived garbled.",
                             code="fetch_unavailable") from exc


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one loads the CA bundle: ~50 ms)."""
    return httpx.create_ssl_context(trust_env=False)


def pin_host(url: str) -> str:
    """The name a pinned connection to ``url`` finds its address by: the ASCII host httpx
    connects to (an international name's IDNA form, as the connection is given it)."""
    return httpx.URL(url).raw_host.decode("ascii").lower()


def pinned_client(policy: FetchPolicy, *,
                  deadline: float = math.inf) -> tuple[httpx.Client, dict[str, str]]:
    """A client that connects each host only to the address pinned for it in the returned
    map (fill it from :func:`check_url` before each request), follows no redirect and
    ignores proxies (``kiln.webhooks.send`` posts through it). Its connects, TLS
    handshakes, writes and reads end by ``deadline`` (``time.monotonic()``): past it, an
    :class:`httpx.TimeoutException`, however the server paces its bytes."""
    return paced_client(policy, Pace(deadline=deadline))


def paced_client(policy: FetchPolicy, pace: Pace) -> tuple[httpx.Client, dict[str, str]]:
    """httpx's client on pinned connections at ``pace`` (TLS still verifies the name)."""
    pins: dict[str, str] = {}
    transport = paced_transport(pace, _ssl_context(), pins=pins, trust_env=False,
                                max_connections=4)
    client = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                          timeout=httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout),
                          headers={"Accept-Encoding": ", ".join(ENCODINGS)})
    return client, pins


def fetch_small(url: str, policy: FetchPolicy, limit: int, *,
                resolve: Resolver = system_resolve) -> bytes:
    """A small file (a thumbnail) whole in memory, at most ``limit`` bytes, same checks.

    Raises:
        PermanentError / RetryableError: as :func:`open_stream`.
    """
    capped = dataclasses.replace(policy, max_bytes=min(limit, policy.max_bytes))
    download = open_stream(url, capped, resolve=resolve)
    return b"".join(download.chunks)
