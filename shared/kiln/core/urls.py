"""The rules a URL Kiln will download must pass that need no lookup (pure logic).

One implementation for both places that apply them: :func:`refusal` at submit (an
``options.imageUrl`` that fails is a 400 before a job exists) and
``kiln.providers.fetch.check_url`` before every download, which then also resolves the
host and checks every address it gets (:func:`forbidden_reason`). Each function returns
the reason a URL is refused, as a clause ("it is not HTTPS"), or "" when it passes.
The rules are listed in docs/client-contract.md ("imageUrl").
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Hosts that are loopback by name (``http`` to them only in local mode).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Names that always stand for a machine's own or its platform's metadata server.
INTERNAL_NAMES = ("localhost", "metadata.google.internal", "metadata.goog", "metadata")


def host_of(url: str) -> str:
    """The URL's host, lower-case, without a trailing dot ("" when it has none or is not a
    URL). A name written in other characters is the ASCII one the HTTP client (httpx)
    connects to, by the same rules (IDNA 2008: ``bücher.example`` is
    ``xn--bcher-kva.example``, ``straße.example`` is ``xn--strae-oqa.example``, not
    IDNA 2003's ``strasse.example``, another domain); a name with no such form
    (``１０．０．０．１``, ``ⓜⓔⓣⓐ.example``) is "" (refused as having no host)."""
    try:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
    if not host.isascii():
        import idna  # (the library httpx encodes hosts with; here only for such a name)

        try:
            host = idna.encode(host).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return ""
    return host.rstrip(".")


def form_refusal(url: str, *, allow_local: bool) -> str:
    """Why ``url``'s form is refused: a character no URL holds as it is (whitespace, a
    control or format character, a lone surrogate: an HTTP client cannot send it, and
    Firestore cannot store a surrogate), not a URL, port 0, no host, credentials, not ``https``
    (``http`` only to a loopback host when ``allow_local``)."""
    if " " in url or not url.isprintable():  # (every other space is not printable)
        return "it contains whitespace or a character that is not printable"
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.port == 0:  # (raises ValueError for a port that is not a number)
            return "its port is 0, which no server listens on"
    except ValueError:
        return "it is not a valid URL"
    host = host_of(url)
    if not host:
        return "it has no host"
    if parts.username or parts.password:
        return "it carries a user name or password"
    if parts.scheme == "http" and allow_local and host in LOCAL_HOSTS:
        return ""
    if parts.scheme != "https":
        return "it is not HTTPS"
    return ""


def literal(host: str) -> Address | None:
    """The address a host is written as: an IP literal, or an IPv4 address in one of the
    legacy forms a resolver takes without asking DNS (``2130706433``, ``0x7f.1``,
    ``017700000001``)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def forbidden_reason(address: Address, allow_loopback: bool = False) -> str:
    """Why a connection to ``address`` is refused: its class ("private", "link-local", …;
    "" when it is a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return forbidden_reason(mapped, allow_loopback)
    if address.is_loopback:
        return "" if allow_loopback else "loopback"
    checks = (("unspecified", address.is_unspecified), ("link-local", address.is_link_local),
              ("multicast", address.is_multicast), ("private", address.is_private),
              ("reserved", address.is_reserved), ("non-public", not address.is_global))
    return next((name for name, hit in checks if hit), "")


def refusal(url: str, *, allow_local: bool) -> str:
    """Why ``url`` is refused without a lookup: its form, an address literal that is not
    public, or a name that is the machine's own or its metadata server's."""
    why = form_refusal(url, allow_local=allow_local)
    if why:
        return why
    host = host_of(url)
    address = literal(host)
    if address is not None:
        reason = forbidden_reason(address, allow_local)
        return f"it points to a {reason} address" if reason else ""
    if not allow_local and any(host == n or host.endswith("." + n) for n in INTERNAL_NAMES):
        return f"the host {host[:100]} is internal"
    return ""
