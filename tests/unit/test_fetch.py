"""Safe fetching (kiln.providers.fetch): schemes, hosts, address classes, pinning, redirects, caps.

A local server on 127.0.0.1 stands in for result hosts; a fake resolver gives names the
addresses a test needs, so DNS answers (and rebinding) are under the test's control.
"""

from __future__ import annotations

import gzip
import ipaddress
import threading
import time
import types
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kiln import paced
from kiln.core.errors import PermanentError, RetryableError
from kiln.providers.fetch import (
    FetchPolicy,
    check_url,
    check_user_url,
    fetch_small,
    forbidden_reason,
    open_stream,
    pin_host,
    pinned_client,
)
from kiln.settings import Settings

_STOP = threading.Event()  # set when the module's tests end: the drips stop
STEADY = 2048 * 75
LARGE = 3 * 1024 * 1024


#: Compressed answers: path → (Content-Encoding, body). The bomb is 64 MiB of zeros.
GZIPPED = {"/gzip": ("gzip", gzip.compress(b"0123456789abcdef")),
           "/deflate": ("deflate", zlib.compress(b"0123456789abcdef")),
           "/bomb": ("gzip", gzip.compress(b"\0" * (64 << 20))),
           "/stacked": ("gzip, gzip", gzip.compress(gzip.compress(b"0123456789abcdef"))),
           "/brotli": ("br", b"\x0b\x07\x80hello\x03"),
           "/cut": ("gzip", gzip.compress(b"0123456789abcdef" * 10)[:-12]),
           "/expired": ("identity", b"<Error>Request has expired</Error>")}


class _Files(BaseHTTPRequestHandler):
    """``/ok`` (16 bytes), ``/big`` (Content-Length 4096), ``/stream`` (4096, no length),
    ``/to?url`` (302 to url), ``/loop`` (302 to itself), ``/host`` (echoes Host),
    ``/drip-head`` (its headers a byte every 50 ms), ``/drip-body`` (headers at once, then
    the body a byte every 50 ms), ``/steady`` (``STEADY`` bytes, 2 KiB every 20 ms: about
    100 KiB/s), ``/late-steady`` (the same after 0.4 s without an answer), ``/large``
    (``LARGE`` bytes at once)."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/drip-head":
            self._paced(b"HTTP/1.1 200 OK\r\nX-Drip: " + b"a" * 100_000, 1, 0.05)
        elif self.path in ("/drip-body", "/steady", "/late-steady", "/large"):
            size = {"/drip-body": 100_000, "/large": LARGE}.get(self.path, STEADY)
            if self.path == "/late-steady" and _STOP.wait(0.4):  # a slow first answer
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.path == "/large":
                self.wfile.write(b"L" * size)
            else:
                self._paced(b"s" * size, *((1, 0.05) if self.path == "/drip-body" else (2048, 0.02)))
        elif self.path.startswith("/to?"):
            self._redirect(self.path[4:])
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path in GZIPPED:
            encoding, body = GZIPPED[self.path]
            self.send_response(200 if self.path != "/expired" else 403)
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/stream":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 4096)
            self.close_connection = True
        else:
            body = {"/ok": b"0123456789abcdef", "/big": b"y" * 4096,
                    "/host": str(self.headers.get("Host")).encode()}.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    def _paced(self, data: bytes, size: int, every: float) -> None:
        """``data`` in pieces of ``size`` bytes, one every ``every`` seconds."""
        self.close_connection = True
        try:
            for at in range(0, len(data), size):
                if _STOP.wait(every):
                    return
                self.wfile.write(data[at:at + size])
        except OSError:  # the client hung up
            pass

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _STOP.set()
    httpd.shutdown()
    httpd.server_close()


LOCAL = FetchPolicy(hosts=None, allow_local=True, max_bytes=1024)


def refused(call: Any, *args: Any, **kw: Any) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        call(*args, **kw)
    return caught.value


@pytest.mark.parametrize("address", [
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "127.0.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "100.64.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2002:a00:1::",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    # given an address that is not on the public internet (IPv4-mapped and 6to4 included)
    # then it has a reason to be refused outside local mode
    assert forbidden_reason(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == ""


def test_loopback_is_allowed_only_in_local_mode() -> None:
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) == ""
    assert forbidden_reason(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) == "private"


@pytest.mark.parametrize("url, why", [
    ("http://files.example.com/a.glb", "not HTTPS"),
    ("ftp://files.example.com/a.glb", "not HTTPS"),
    ("file:///etc/passwd", "no host"),
    ("https://user:pw@files.example.com/a.glb", "user name"),
    ("https://evil.example.net/a.glb", "not one this service downloads from"),
    ("https://169.254.169.254/latest/meta-data/", "not one this service"),
])
def test_urls_outside_the_policy_are_refused(url: str, why: str) -> None:
    # given a provider policy for *.example.com in cloud mode
    policy = FetchPolicy(hosts=("*.example.com",))
    # when the URL is checked (the resolver says: a public address)
    error = refused(check_url, url, policy, lambda host, port: ["93.184.216.34"])
    # then it is refused with a reason
    assert error.code == "unsafe_result_url" and why in error.message


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    # given an allowed host whose DNS answer includes the metadata address
    policy = FetchPolicy(hosts=("cdn.example.com",))
    error = refused(check_url, "https://cdn.example.com/x.glb", policy,
                    lambda host, port: ["93.184.216.34", "169.254.169.254"])
    # then every answer counts: it is refused
    assert "link-local" in error.message


def test_an_allowed_ip_literal_is_still_checked() -> None:
    # given the metadata address allowed by (mis)configuration
    policy = FetchPolicy(hosts=("169.254.169.254",))
    error = refused(check_url, "https://169.254.169.254/latest/", policy)
    assert "link-local" in error.message


def test_allowed_fetch_hosts_extend_the_providers_hosts() -> None:
    settings = Settings(allowed_fetch_hosts="cdn.partner.io, *.files.example")
    policy = FetchPolicy.for_provider(settings, ["assets.meshy.ai"])
    public = lambda host, port: ["93.184.216.34"]  # noqa: E731
    for url in ("https://assets.meshy.ai/a.glb", "https://cdn.partner.io/a",
                "https://eu.files.example/a"):
        assert check_url(url, policy, public)
    assert refused(check_url, "https://files.example/a", policy, public)


def test_user_image_urls_are_refused_with_a_readable_code() -> None:
    settings = Settings(env="cloud")
    error = refused(check_user_url, "http://10.0.0.1/cat.png", settings)
    assert error.code == "invalid_image_url" and "image link" in error.message
    error = refused(check_user_url, "https://metadata.internal/cat.png", settings,
                    lambda host, port: ["169.254.169.254"])
    assert error.code == "invalid_image_url"
    assert check_user_url("https://img.example.org/cat.png", settings, lambda h, p: ["8.8.8.8"])


def test_the_connection_goes_to_the_checked_address(files: str) -> None:
    # given a name that "resolves" to 127.0.0.1 once, and would resolve elsewhere later
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    port = files.rsplit(":", 1)[1]
    # when it is downloaded (local mode allows loopback; cloud mode would not)
    download = open_stream(f"http://localhost:{port}/host", LOCAL,
                           resolve=lambda host, p: next(answers))
    # then the server saw the original Host header; the second answer was never asked
    assert b"".join(download.chunks) == f"localhost:{port}".encode()


def test_an_international_name_is_pinned_as_the_name_the_connection_is_given(files: str) -> None:
    """Given a host with non-ASCII letters, then its pin is keyed by the IDNA name httpx
    hands the connection (a pin under the Unicode name was never found: every download
    from or webhook to such a host failed to connect), and the Host header keeps it."""
    port = files.rsplit(":", 1)[1]
    url = f"http://Bücher.example:{port}/host"
    assert pin_host(url) == "xn--bcher-kva.example"
    client, pins = pinned_client(LOCAL)
    pins[pin_host(url)] = "127.0.0.1"
    with client:
        assert client.get(url).text == f"xn--bcher-kva.example:{port}"


def test_a_redirect_to_a_private_address_is_refused(files: str) -> None:
    for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x",
                   "http://[::ffff:a9fe:a9fe]/x"):
        error = refused(open_stream, f"{files}/to?{target}", LOCAL)
        assert error.code == "unsafe_result_url"


def test_redirects_are_followed_and_capped(files: str) -> None:
    assert b"".join(open_stream(f"{files}/to?/ok", LOCAL).chunks) == b"0123456789abcdef"
    error = refused(open_stream, f"{files}/loop", LOCAL)
    assert "more than 5" in error.message


def test_sizes_are_capped_up_front_and_while_streaming(files: str) -> None:
    # Content-Length over the cap: refused before any body is read
    assert refused(open_stream, f"{files}/big", LOCAL).code == "artifact_too_large"
    # no Content-Length: the count stops it mid-stream
    download = open_stream(f"{files}/stream", LOCAL)
    assert download.size is None
    assert refused(lambda: b"".join(download.chunks)).code == "artifact_too_large"
    assert refused(fetch_small, f"{files}/ok", LOCAL, 8).code == "artifact_too_large"


def test_http_is_refused_outside_local_mode(files: str) -> None:
    error = refused(open_stream, f"{files}/ok", FetchPolicy(hosts=None))
    assert "not HTTPS" in error.message


def test_an_expired_or_missing_link_is_retryable_another_attempt_fetches_it_afresh(
        files: str) -> None:
    for path in ("/expired", "/nothing"):
        with pytest.raises(RetryableError) as caught:
            open_stream(f"{files}{path}", LOCAL)
        assert caught.value.code == "result_unavailable"


def test_a_compressed_result_is_decoded_and_counted_as_it_is_decoded(files: str) -> None:
    """gzip and deflate come decoded; a gzip bomb (64 MiB of zeros in 64 KiB) is refused
    at the cap without ever being held whole; stacked or unknown encodings are refused,
    and a stream cut short is a retryable fault."""
    import tracemalloc

    for path in ("/gzip", "/deflate"):
        assert b"".join(open_stream(f"{files}{path}", LOCAL).chunks) == b"0123456789abcdef"
    tracemalloc.start()
    try:
        download = open_stream(f"{files}/bomb", LOCAL)
        assert refused(lambda: b"".join(download.chunks)).code == "artifact_too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes held while refusing a bomb"
    for path in ("/stacked", "/brotli"):
        chunks = open_stream(f"{files}{path}", LOCAL).chunks
        assert refused(b"".join, chunks).code == "result_unavailable"
    download = open_stream(f"{files}/cut", LOCAL)
    with pytest.raises(RetryableError):
        b"".join(download.chunks)


#: Half a second of waiting must bring 16 KiB; a test allows this much past it (a loaded machine).
PACED = FetchPolicy(hosts=None, allow_local=True, read_timeout=0.5, min_progress=16 * 1024)
MARGIN = 3.0


def run_bounded(bound: float, call: Any) -> tuple[BaseException | Any, float]:
    """``call()`` in a thread: what it returned or raised, and the seconds it took; a test
    failure (not a hang) when it is still running after ``bound`` seconds."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still running after {elapsed:.1f} s (bound {bound} s)"
    return outcome[0], elapsed


@pytest.mark.parametrize("path", ["/drip-head", "/drip-body"])
def test_a_server_dripping_bytes_is_cut_as_a_timeout(files: str, path: str) -> None:
    """Given a result server that sends its headers, or its body, a byte every 50 ms (each
    read far inside the 0.5 s read timeout), when the result is downloaded, then it ends
    within the timeout plus a margin with a retryable fetch_timeout: 0.5 s of waiting
    brought less than the 16 KiB floor."""
    failure, _elapsed = run_bounded(
        0.5 + MARGIN, lambda: b"".join(open_stream(f"{files}{path}", PACED).chunks))
    assert isinstance(failure, RetryableError) and failure.code == "fetch_timeout"


def test_a_steady_slow_download_is_not_cut(files: str) -> None:
    """Given a result that arrives at about 100 KiB/s and takes well over the 0.5 s read
    timeout in all, when it is downloaded, then it arrives whole: the floor is on progress,
    not a deadline on the whole download."""
    body, elapsed = run_bounded(20.0, lambda: b"".join(open_stream(f"{files}/steady", PACED).chunks))
    assert body == b"s" * STEADY and elapsed > PACED.read_timeout


def test_a_slow_first_answer_does_not_eat_into_the_bodys_window(files: str) -> None:
    """Given a result server that answers after 0.4 s (most of the 0.5 s window), then
    streams steadily at about 100 KiB/s, when it is downloaded, then it arrives whole: the
    body's window starts with the body, not with the request."""
    body, _elapsed = run_bounded(
        20.0, lambda: b"".join(open_stream(f"{files}/late-steady", PACED).chunks))
    assert body == b"s" * STEADY


def test_time_the_consumer_spends_between_chunks_is_not_a_stall(
        files: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a 3 MiB result served at once, when the consumer takes longer than the 0.5 s
    window over each 1 MiB chunk (as a slow upload into the bucket would), then the
    download still arrives whole: only time spent waiting on the server counts. The
    consumer's time passes on the paced connections' clock (``kiln.paced``), not by
    sleeping."""
    policy = FetchPolicy(hosts=None, allow_local=True, read_timeout=0.5, min_progress=LARGE)
    spent = [0.0]
    monkeypatch.setattr(paced, "time", types.SimpleNamespace(
        monotonic=lambda: time.monotonic() + spent[0]))

    def slow_consumer() -> int:
        total = 0
        for chunk in open_stream(f"{files}/large", policy).chunks:
            total += len(chunk)
            spent[0] += 0.6  # the consumer's own work between reads, not a wait for a result
        return total

    total, _elapsed = run_bounded(20.0, slow_consumer)
    assert total == LARGE
