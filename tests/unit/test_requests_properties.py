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

from kiln.core.errors import ValidationError
from kiln.core.requests import JobRequest, parse_job_request

CODES = {"invalid_body", "unknown_field", "invalid_kind", "invalid_prompt", "invalid_options"}

#: any text, lone surrogates and control characters included
texts = st.text(st.characters(codec=None, categories=None), max_size=30) | st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "x\x1b[31m", "", " ", "image", "model", "1:1", "https://a.b/c"])
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**2000)
           | st.floats(allow_nan=True, allow_infinity=True) | texts)
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(texts, inner, max_size=4), max_leaves=25)
option_names = st.sampled_from(["aspectRatio", "seed", "style", "imageUrl", "texture"]) | texts
bodies = st.fixed_dictionaries(
    {"kind": st.sampled_from(["image", "model"]) | json_like, "prompt": texts | json_like},
    optional={"options": st.dictionaries(option_names, json_like, max_size=4) | json_like,
              "extra": json_like},
)


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
