"""An address or an internal name written in other characters is refused as itself: a
client connects to the ASCII form (IDNA) of what it is given."""

from __future__ import annotations

import pytest

from kiln.core.urls import host_of, refusal


@pytest.mark.parametrize(("url", "why"), [
    ("https://10．0．0．1/x.png", "it points to a private address"),
    ("https://１０.0.0.1/x.png", "it points to a private address"),
    ("https://169。254。169。254/latest", "it points to a link-local address"),
    ("https://127｡0｡0｡1/x.png", "it points to a loopback address"),
    ("https://metadata．google．internal/x", "the host metadata.google.internal is internal"),
    ("https://ｌｏｃａｌｈｏｓｔ/x", "the host localhost is internal"),
])
def test_a_disguised_address_or_internal_name_is_refused(url: str, why: str) -> None:
    assert refusal(url, allow_local=False) == why


def test_an_international_name_is_kept_as_its_ascii_form() -> None:
    assert host_of("https://Bücher.example/a.png") == "xn--bcher-kva.example"
    assert refusal("https://bücher.example/a.png", allow_local=False) == ""
    assert refusal("https://ｅｘａｍｐｌｅ.com/a.png", allow_local=False) == ""


def test_a_name_with_no_ascii_form_has_no_host() -> None:
    """A label of 70 letters has no IDNA form (63 at most): no client could connect."""
    assert host_of("https://" + "é" * 70 + ".example/") == ""
    assert refusal("https://" + "é" * 70 + ".example/", allow_local=False) == "it has no host"
