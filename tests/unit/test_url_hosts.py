"""An address or an internal name written in other characters is refused as itself: a
client connects to the ASCII form (IDNA) of what it is given."""

from __future__ import annotations

import pytest

from kiln.core.urls import host_of, refusal


@pytest.mark.parametrize(("url", "why"), [
    ("https://10．0．0．1/x.png", "it points to a private address"),
    # fullwidth letters or digits: no IDNA 2008 form, so no client connects (httpx refuses)
    ("https://１０.0.0.1/x.png", "it has no host"),
    ("https://169。254。169。254/latest", "it points to a link-local address"),
    ("https://127｡0｡0｡1/x.png", "it points to a loopback address"),
    ("https://metadata．google．internal/x", "the host metadata.google.internal is internal"),
    ("https://ｌｏｃａｌｈｏｓｔ/x", "it has no host"),
])
def test_a_disguised_address_or_internal_name_is_refused(url: str, why: str) -> None:
    assert refusal(url, allow_local=False) == why


def test_an_international_name_is_kept_as_its_ascii_form() -> None:
    assert host_of("https://Bücher.example/a.png") == "xn--bcher-kva.example"
    assert refusal("https://bücher.example/a.png", allow_local=False) == ""
    assert refusal("https://ｅｘａｍｐｌｅ.com/a.png", allow_local=False) == "it has no host"


@pytest.mark.parametrize("name", ["bücher.example", "straße.example", "ςa.example", "Bücher.Example",
                                  "10．0．0．1", "xn--bcher-kva.example", "例え.テスト"])
def test_the_host_checked_is_the_host_the_client_connects_to(name: str) -> None:
    """Kiln resolves and checks ``host_of``; httpx connects to its own encoding of the name.
    They must be one name: IDNA 2003 made ``straße`` ``strasse`` (another domain, checked
    while ``xn--strae-oqa`` was connected to)."""
    import httpx

    assert host_of(f"https://{name}/h") == httpx.URL(f"https://{name}/h").raw_host.decode()


def test_a_name_with_no_ascii_form_has_no_host() -> None:
    """A label of 70 letters has no IDNA form (63 at most): no client could connect."""
    assert host_of("https://" + "é" * 70 + ".example/") == ""
    assert refusal("https://" + "é" * 70 + ".example/", allow_local=False) == "it has no host"
