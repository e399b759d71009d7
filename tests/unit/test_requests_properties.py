"""Property tests of the request models: whatever JSON-like value arrives, parse_job_request
returns a JobRequest or raises ValidationError with a known code, never anything else.

Hypothesis comes with the dev extra.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from kiln.core import urls as urls_core
from kiln.core.errors import PermanentError, RequestError, ValidationError
from kiln.core.identity import check_app_uid
from kiln.core.requests import BLANK_LETTERS, JobRequest, _visible, parse_job_request
from kiln.providers.fetch import FetchPolicy, check_url
from strategies import bodies, json_like, texts

CODES = {"invalid_body", "unknown_field", "invalid_kind", "invalid_prompt", "invalid_options"}

def nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def check(body: Any) -> JobRequest | ValidationError:
    try:
        req = parse_job_request(body)
    except ValidationError as exc:
        assert exc.code in CODES, exc.code
        assert exc.message and exc.message.isprintable(), exc.message
        json.dumps({"error": {"code": exc.code, "message": exc.message}})  # answerable as is
        return exc
    assert isinstance(req, JobRequest) and isinstance(req.options, dict)
    req.fingerprint()
    return req


@settings(max_examples=400, deadline=None)
@given(json_like)
def test_any_json_value_is_a_request_or_a_validation_error(body: Any) -> None:
    check(body)


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_any_request_shaped_body_is_a_request_or_a_validation_error(body: dict[str, Any]) -> None:
    outcome = check(body)
    if isinstance(outcome, JobRequest):
        assert outcome.kind in ("image", "model")
        assert 1 <= len(outcome.prompt) <= 1000 and outcome.prompt == " ".join(outcome.prompt.split())
        assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in outcome.prompt)
        style = outcome.options.get("style")
        assert style is None or all(unicodedata.category(c) not in ("Cc", "Cs") for c in style)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_unseeable_prompts_are_refused_as_prompts(prompt: str) -> None:
    """A prompt with a lone surrogate or a control character (other than whitespace) is
    refused with invalid_prompt."""
    outcome = check({"kind": "image", "prompt": prompt})
    collapsed = " ".join(prompt.split())
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in collapsed):
        assert isinstance(outcome, ValidationError) and outcome.code == "invalid_prompt"


@settings(max_examples=200, deadline=None)
@given(texts)
def test_unseeable_styles_are_refused_as_options(style: str) -> None:
    outcome = check({"kind": "model", "prompt": "p", "options": {"style": style}})
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in style):
        assert isinstance(outcome, ValidationError) and outcome.code == "invalid_options"


@pytest.mark.parametrize("depth", [50, 500, 5000])
def test_deeply_nested_values_are_refused_quietly(depth: int) -> None:
    for body in (nested(depth), {"kind": "image", "prompt": nested(depth)},
                 {"kind": "image", "prompt": "p", "options": nested(depth)},
                 {"kind": "image", "prompt": "p", "options": {"seed": nested(depth)}},
                 {"kind": "image", "prompt": "p", "deep": nested(depth)}):
        assert isinstance(check(body), ValidationError)


# --- issue 15: visible text, integers, imageUrl ---------------------------------------------

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@settings(max_examples=200, deadline=None)
@given(texts, st.sampled_from(BIDI), texts)
def test_a_bidi_control_anywhere_is_refused(before: str, control: str, after: str) -> None:
    text = before + control + after
    outcome = check({"kind": "image", "prompt": text})
    assert isinstance(outcome, ValidationError) and outcome.code == "invalid_prompt"
    outcome = check({"kind": "image", "prompt": "p", "options": {"style": text[:64]}})
    assert isinstance(outcome, ValidationError) and outcome.code == "invalid_options"


@settings(max_examples=300, deadline=None)
@given(texts)
def test_an_accepted_prompt_has_something_visible(prompt: str) -> None:
    outcome = check({"kind": "image", "prompt": prompt})
    if isinstance(outcome, JobRequest):
        assert any(unicodedata.category(c)[0] in "LNPS" and c not in BLANK_LETTERS
                   for c in outcome.prompt)
        assert not set(outcome.prompt) & set(BIDI)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_an_integral_float_seed_is_that_integer(seed: int) -> None:
    options = parse_job_request({"kind": "image", "prompt": "p",
                                 "options": {"seed": float(seed)}}).options
    assert options["seed"] == seed and type(options["seed"]) is int


hosts = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
                  st.sampled_from(["img.example.org", "localhost", "metadata.google.internal",
                                   "2130706433", "0x7f.1", "017700000001", "a..b", ""]))
urls = st.builds(lambda scheme, cred, host, port: f"{scheme}://{cred}{host}{port}/cat.png",
                 st.sampled_from(["https", "http", "ftp"]),
                 st.sampled_from(["", "u@", "u:p@"]), hosts,
                 st.sampled_from(["", ":443", ":8080", ":99999", ":x"]))


@settings(max_examples=400, deadline=None)
@given(urls, st.booleans())
def test_what_submit_refuses_the_fetcher_refuses(url: str, local: bool) -> None:
    """One set of rules: a URL refused at submit (no lookup) is refused by the fetcher too,
    and a literal address the fetcher takes is taken at submit."""
    policy = FetchPolicy(hosts=None, allow_local=local, refused_code="invalid_image_url")
    try:
        check_url(url, policy, lambda host, port: ["93.184.216.34"])  # any name is public
        fetcher_refuses = False
    except PermanentError:
        fetcher_refuses = True
    submit_refuses = bool(urls_core.refusal(url, allow_local=local))
    if submit_refuses:
        # a name refused at submit (localhost, metadata) resolves to a private address
        # for the fetcher, which this public-only resolver cannot show: names aside
        assert fetcher_refuses or urls_core.literal(urls_core.host_of(url)) is None
    elif urls_core.literal(urls_core.host_of(url)) is not None:
        assert not fetcher_refuses


def _visible_by_character(text: str) -> str | None:
    """The rule of ``requests._visible`` read character by character (its slow path, which
    ASCII text skips): the error's type, or None when the text passes."""
    seen = False
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            return "control_characters"
        if category == "Cs":
            return "string_unicode"
        if char in BIDI:
            return "bidi_control"
        seen = seen or (category[0] in "LNPS" and char not in BLANK_LETTERS)
    return None if seen else "invisible"


ascii_texts = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=40)


@settings(max_examples=400, deadline=None)
@given(texts | ascii_texts)
def test_the_ascii_fast_path_decides_as_the_character_rule(text: str) -> None:
    try:
        _visible(text)
        outcome = None
    except PydanticCustomError as exc:
        outcome = exc.type
    assert outcome == _visible_by_character(text)


@settings(max_examples=300, deadline=None)
@given(texts | ascii_texts)
def test_the_uid_rule_refuses_exactly_unseeable_characters_and_blanks(uid: str) -> None:
    unseeable = any(unicodedata.category(c) in ("Cc", "Cs", "Cf", "Zl", "Zp") for c in uid) \
        or (uid != "" and not uid.strip())
    try:
        check_app_uid(uid)
        refused = None
    except RequestError as exc:
        refused = exc.code
    if unseeable:
        assert refused == "unsupported_uid"
    elif uid and "/" not in uid and ".." not in uid and uid not in (".", "..") \
            and not (uid.startswith("__") and uid.endswith("__")) \
            and not uid.startswith(("telegram:", "api:")):
        assert refused is None
