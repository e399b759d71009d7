"""The request models (kiln.core.requests): every path of the mapping from pydantic's
errors to Kiln's codes, strictness, the float-integer rule, extra fields, unreadable text,
and fingerprints equal to those of the hand-written validation they replaced."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from kiln.core import contract
from kiln.core.errors import KilnError, RequestError, ValidationError
from kiln.core.job import ASPECT_RATIOS, CHANNELS, KINDS, JobStatus
from kiln.core.requests import JobRequest, clean_prompt, parse_job_request


def refusal(body: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_job_request(body)
    return info.value


def image(**options: Any) -> dict[str, Any]:
    return {"kind": "image", "prompt": "a fox", "options": options}


def model(**options: Any) -> dict[str, Any]:
    return {"kind": "model", "prompt": "a tower", "options": options}


def test_validation_error_is_a_domain_error_not_an_http_one() -> None:
    """ValidationError carries a code, a message and the field; no status (the edge maps it)."""
    err = refusal(image(seed="7"))
    assert isinstance(err, KilnError) and not isinstance(err, RequestError)
    assert (err.code, err.field, err.message) == ("invalid_options", "options.seed",
                                                  "Option 'seed' must be an integer.")
    assert not hasattr(err, "status")


@pytest.mark.parametrize(("body", "code", "field", "message"), [
    ([], "invalid_body", None, "The body must be a JSON object."),
    (None, "invalid_body", None, "The body must be a JSON object."),
    (7, "invalid_body", None, "The body must be a JSON object."),
    ({}, "invalid_kind", "kind", "'kind' must be \"image\" or \"model\"."),
    ({"kind": 1, "prompt": "x"}, "invalid_kind", "kind", "'kind' must be \"image\" or \"model\"."),
    ({"kind": "IMAGE", "prompt": "x"}, "invalid_kind", "kind", "'kind' must be \"image\" or \"model\"."),
    ({"kind": "image", "prompt": "x", "b": 1, "a": 2}, "unknown_field", None,
     "Unknown field(s): a, b (allowed: kind, options, prompt)."),
    ({"kind": "video", "prompt": "x", "priority": 1}, "unknown_field", None,
     "Unknown field(s): priority (allowed: kind, options, prompt)."),
    ({"kind": "image", "prompt": "x", 3: 1}, "unknown_field", None,
     "Unknown field(s): 3 (allowed: kind, options, prompt)."),
    ({"kind": "image", "prompt": "x", "\ud800": 1}, "unknown_field", None,
     "A field name is not valid Unicode text."),
    ({"kind": "image"}, "invalid_prompt", "prompt", "'prompt' is required."),
    ({"kind": "image", "prompt": None}, "invalid_prompt", "prompt", "'prompt' must be a string."),
    ({"kind": "image", "prompt": ["a"]}, "invalid_prompt", "prompt", "'prompt' must be a string."),
    ({"kind": "image", "prompt": " \n\t "}, "invalid_prompt", "prompt", "'prompt' must not be empty."),
    ({"kind": "image", "prompt": "é" * 1001}, "invalid_prompt", "prompt",
     "'prompt' must be at most 1000 characters."),
    ({"kind": "image", "prompt": "a\x00b"}, "invalid_prompt", "prompt",
     "'prompt' must not contain control characters."),
    ({"kind": "image", "prompt": "a\x1bb"}, "invalid_prompt", "prompt",
     "'prompt' must not contain control characters."),
    ({"kind": "image", "prompt": "a \ud800"}, "invalid_prompt", "prompt",
     "'prompt' must be valid Unicode text."),
    ({"kind": "image", "prompt": "x", "options": "seed=1"}, "invalid_options", "options",
     "'options' must be an object."),
    ({"kind": "image", "prompt": "x", "options": [1]}, "invalid_options", "options",
     "'options' must be an object."),
    ({"kind": "image", "prompt": "x", "options": {"\udc00": 1}}, "invalid_options", "options",
     "An option name is not valid Unicode text."),
    (image(texture=True), "invalid_options", "options.texture",
     "Unknown option 'texture' for kind 'image' (allowed: aspectRatio, seed, style)."),
    (model(aspectRatio="1:1"), "invalid_options", "options.aspectRatio",
     "Unknown option 'aspectRatio' for kind 'model' (allowed: imageUrl, seed, style, texture)."),
    (image(aspectRatio="2:1"), "invalid_options", "options.aspectRatio",
     "Option 'aspectRatio' must be one of '1:1', '4:3', '3:4', '16:9' or '9:16'."),
    (image(aspectRatio=1), "invalid_options", "options.aspectRatio",
     "Option 'aspectRatio' must be one of '1:1', '4:3', '3:4', '16:9' or '9:16'."),
    (image(seed=-1), "invalid_options", "options.seed", "Option 'seed' must be at least 0."),
    (image(seed=2**31), "invalid_options", "options.seed", "Option 'seed' must be at most 2147483647."),
    (image(seed=10**400), "invalid_options", "options.seed", "Option 'seed' must be at most 2147483647."),
    (image(seed=None), "invalid_options", "options.seed", "Option 'seed' must be an integer."),
    (image(style=""), "invalid_options", "options.style", "Option 'style' must not be empty."),
    (image(style="s" * 65), "invalid_options", "options.style",
     "Option 'style' must be at most 64 characters."),
    (image(style=3), "invalid_options", "options.style", "Option 'style' must be a string."),
    (image(style="oil\npaint"), "invalid_options", "options.style",
     "Option 'style' must not contain control characters."),
    (image(style="\udfff"), "invalid_options", "options.style", "Option 'style' must be valid Unicode text."),
    (model(texture=1), "invalid_options", "options.texture", "Option 'texture' must be true or false."),
    (model(texture="true"), "invalid_options", "options.texture", "Option 'texture' must be true or false."),
    (model(imageUrl="ftp://a/b.png"), "invalid_options", "options.imageUrl",
     "Option 'imageUrl' must be an https URL of at most 2048 characters."),
    (model(imageUrl="http://[::1"), "invalid_options", "options.imageUrl",
     "Option 'imageUrl' must be an https URL of at most 2048 characters."),
    (model(imageUrl="https://a/" + "x" * 2048), "invalid_options", "options.imageUrl",
     "Option 'imageUrl' must be at most 2048 characters."),
    (model(imageUrl=""), "invalid_options", "options.imageUrl", "Option 'imageUrl' must not be empty."),
])
def test_each_refusal_has_its_code_field_and_message(body: Any, code: str, field: str | None,
                                                     message: str) -> None:
    err = refusal(body)
    assert (err.code, err.field, err.message) == (code, field, message)


def test_the_first_problem_in_request_order_is_reported() -> None:
    """Unknown fields before kind, kind before prompt, prompt before options."""
    assert refusal({"kind": "video", "prompt": 1, "extra": 1}).code == "unknown_field"
    assert refusal({"kind": "video", "prompt": 1}).code == "invalid_kind"
    assert refusal({"kind": "image", "prompt": 1, "options": {"seed": "x"}}).code == "invalid_prompt"


def test_unknown_field_names_are_shortened_and_counted() -> None:
    """A caller may send any key: a message shows at most five, each at most 40 characters."""
    body = {"kind": "image", "prompt": "x", **{f"f{i}": i for i in range(7)}, "k" * 100: 1}
    message = refusal(body).message
    assert message.startswith("Unknown field(s): f0, f1, f2, f3, f4 and 3 more")
    assert refusal({"kind": "image", "prompt": "x", "k" * 100: 1}).message.startswith(
        f"Unknown field(s): {'k' * 40}… ")


@pytest.mark.parametrize("seed", [0, 7, 30920248.0, 2.0**31 - 1, 2147483647])
def test_an_integral_float_is_an_integer(seed: Any) -> None:
    """JSON Schema's integer: 30920248.0 is the integer 30920248, and is stored as an int."""
    options = parse_job_request(image(seed=seed)).options
    assert options == {"seed": int(seed)} and type(options["seed"]) is int


@pytest.mark.parametrize("seed", [True, False, "7", 7.5, float("nan"), float("inf"), [7], {"v": 7}])
def test_seed_is_strict(seed: Any) -> None:
    """No coercion: a bool, a string, a fraction, NaN or infinity is not an integer."""
    assert refusal(image(seed=seed)).code == "invalid_options"


def test_prompt_whitespace_is_collapsed_and_visible_text_kept() -> None:
    req = parse_job_request({"kind": "model", "prompt": "\u3000a\u00a0 red\r\n\ttower \u2028"})
    assert req.prompt == "a red tower"
    assert parse_job_request({"kind": "image", "prompt": "🦊 Füchsin\u200d"}).prompt == "🦊 Füchsin\u200d"
    assert len(parse_job_request({"kind": "image", "prompt": " " * 50 + "é" * 1000}).prompt) == 1000


@pytest.mark.parametrize("text", ["\u202eevil", "a\u202ab", "x\u2066y\u2069", "ok\u202d"])
def test_bidi_controls_are_refused_in_prompt_and_style(text: str) -> None:
    """Text a user sees reordered (issue 15, item 9) is refused, in prompt and in style."""
    for body, code in [({"kind": "image", "prompt": text}, "invalid_prompt"),
                       (image(style=text), "invalid_options")]:
        error = refusal(body)
        assert error.code == code and "bidirectional controls" in error.message


@pytest.mark.parametrize("text", ["\u200b", "\u200b \u200d\ufeff", "\u3164\u3164", "\u2800",
                                  "\u0301\u0308", "\u2060\u00ad", "\u115f\u1160\uffa0"])
def test_nothing_but_invisible_characters_is_refused(text: str) -> None:
    assert refusal({"kind": "image", "prompt": text}).message == (
        "'prompt' must contain a visible character, not only spaces or invisible ones.")
    assert refusal(image(style=text)).code == "invalid_options"


@pytest.mark.parametrize("text", ["🔥", "1", "?", "a\u200bb", "e\u0301", "👩\u200d🚀", "日本"])
def test_visible_text_with_invisible_parts_is_kept(text: str) -> None:
    assert parse_job_request({"kind": "image", "prompt": text}).prompt == text


def test_lengths_are_counted_in_code_points() -> None:
    """The contract's unit: 1000 astral emoji (2000 UTF-16 units in JavaScript's
    ``length``, 1000 in ``[...text].length``) is a prompt of 1000."""
    assert len(parse_job_request({"kind": "image", "prompt": "🦊" * 1000}).prompt) == 1000
    assert refusal({"kind": "image", "prompt": "🦊" * 1001}).code == "invalid_prompt"


def test_options_absent_null_or_empty_are_the_same_request() -> None:
    prints = {parse_job_request({"kind": "image", "prompt": "p", **extra}).fingerprint()
              for extra in ({}, {"options": None}, {"options": {}})}
    assert len(prints) == 1
    assert parse_job_request({"kind": "image", "prompt": "p", "options": None}).options == {}


def test_only_given_options_are_kept_as_given() -> None:
    req = parse_job_request(model(imageUrl=" https://a.example/x.png", texture=False, style="clay"))
    assert req == JobRequest("model", "a tower", {"imageUrl": " https://a.example/x.png",
                                                  "texture": False, "style": "clay"})
    assert isinstance(req.options, dict)


@pytest.mark.parametrize(("body", "fingerprint"), [
    ({"kind": "image", "prompt": " a  cat "}, "c3f30e58ac556ec8008d8b27fd651401"),
    ({"kind": "image", "prompt": "x", "options": {"seed": 5, "aspectRatio": "1:1", "style": "oil"}},
     "8891072142fe3a9cad4f5e1f81d85189"),
    ({"kind": "model", "prompt": "a tower",
      "options": {"texture": True, "imageUrl": "https://a.b/x.png", "seed": 0}},
     "83743993d6389b8e90a0749a36054b82"),
    ({"kind": "model", "prompt": "t", "options": None}, "9fc4f9616814215e434c1e958fff4860"),
])
def test_fingerprints_are_those_of_the_hand_written_validation(body: dict[str, Any],
                                                               fingerprint: str) -> None:
    """Values computed with the validation before pydantic: a replayed request after the
    upgrade still matches its idempotency key."""
    assert parse_job_request(body).fingerprint() == fingerprint


def test_clean_prompt_checks_one_prompt() -> None:
    assert clean_prompt("  a \n b ") == "a b"
    for bad, message in [(1, "'prompt' must be a string."), ("", "'prompt' must not be empty."),
                         ("a\x07", "'prompt' must not contain control characters.")]:
        with pytest.raises(ValidationError) as info:
            clean_prompt(bad)
        assert (info.value.code, info.value.field, info.value.message) == (
            "invalid_prompt", "prompt", message)


def test_contract_literals_match_the_model() -> None:
    """The Literal types in the contract are written out; they equal kiln.core.job's."""
    assert get_args(get_args(contract.JobStatus.__value__)[0]) == tuple(s.value for s in JobStatus)
    assert get_args(get_args(contract.Kind.__value__)[0]) == KINDS
    assert get_args(get_args(contract.Channel.__value__)[0]) == CHANNELS
    aspect = contract.ImageOptions.model_fields["aspectRatio"].annotation
    assert get_args(aspect) == ASPECT_RATIOS
