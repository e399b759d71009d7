"""Validation of new job requests and the transition table (pure logic)."""

from __future__ import annotations

import pytest

from kiln.core.errors import ValidationError
from kiln.core.job import (
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    allowed,
    is_valid_job_id,
    new_job_id,
)
from kiln.core.requests import parse_job_request


def test_valid_request_is_trimmed_and_kept() -> None:
    """Given a prompt with extra spaces, when parsed, then it is trimmed and collapsed."""
    req = parse_job_request({"kind": "image", "prompt": "  a  red\n sphere ",
                             "options": {"aspectRatio": "16:9"}})
    assert (req.kind, req.prompt, req.options) == ("image", "a red sphere", {"aspectRatio": "16:9"})


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "invalid_body"),
        ("text", "invalid_body"),
        ({"prompt": "x"}, "invalid_kind"),
        ({"kind": "video", "prompt": "x"}, "invalid_kind"),
        ({"kind": "image"}, "invalid_prompt"),
        ({"kind": "image", "prompt": 42}, "invalid_prompt"),
        ({"kind": "image", "prompt": "   "}, "invalid_prompt"),
        ({"kind": "image", "prompt": "x" * 1001}, "invalid_prompt"),
        ({"kind": "image", "prompt": "x", "options": []}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "options": {"imageUrl": "https://a"}}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "options": {"aspectRatio": "2:1"}}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "options": {"seed": "7"}}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "options": {"seed": True}}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "options": {"seed": -1}}, "invalid_options"),
        ({"kind": "model", "prompt": "x", "options": {"texture": "yes"}}, "invalid_options"),
        ({"kind": "model", "prompt": "x", "options": {"imageUrl": "file:///etc/passwd"}},
         "invalid_options"),
        ({"kind": "model", "prompt": "x", "options": {"imageUrl": "https://"}}, "invalid_options"),
        ({"kind": "image", "prompt": "x", "priority": 1}, "unknown_field"),
    ],
)
def test_bad_requests_name_the_problem(body: object, code: str) -> None:
    """Given a malformed body, when parsed, then a ValidationError with a specific code is
    raised (the domain has no status; the HTTP edge answers it with 400)."""
    with pytest.raises(ValidationError) as info:
        parse_job_request(body)
    assert info.value.code == code
    assert info.value.message


def test_prompt_of_exactly_1000_characters_is_accepted() -> None:
    """Given the longest allowed prompt, when parsed, then it is accepted unchanged."""
    assert len(parse_job_request({"kind": "model", "prompt": "y" * 1000}).prompt) == 1000


def test_idempotency_key_maps_to_one_id_per_user() -> None:
    """Same (uid, key) → same id; another user or key → another id; no key → random ids."""
    assert new_job_id("u1", "k") == new_job_id("u1", "k")
    assert new_job_id("u1", "k") != new_job_id("u2", "k")
    assert new_job_id("u1", "k") != new_job_id("u1", "k2")
    assert new_job_id("u1") != new_job_id("u1")
    assert is_valid_job_id(new_job_id("u1")) and is_valid_job_id(new_job_id("u1", "k"))


def test_fingerprint_tells_a_replay_from_a_different_request() -> None:
    """Given two requests, the fingerprint is equal only when kind, prompt and options are."""
    a = parse_job_request({"kind": "image", "prompt": "a cat"})
    assert a.fingerprint() == parse_job_request({"kind": "image", "prompt": " a  cat"}).fingerprint()
    assert a.fingerprint() != parse_job_request({"kind": "model", "prompt": "a cat"}).fingerprint()


def test_terminal_states_have_no_way_out_but_retry_from_failed() -> None:
    """Every transition out of a terminal status is refused, except retry from failed."""
    for name, (sources, _target) in TRANSITIONS.items():
        for status in TERMINAL:
            expected = name == "retry" and status is JobStatus.FAILED
            assert (status in sources) == expected, (name, status)


def test_transition_table_matches_the_contract() -> None:
    """pending→processing→completed|failed; pending|processing→canceled; failed→pending."""
    assert allowed("claim", "pending") and allowed("complete", "processing")
    assert allowed("cancel", "pending") and allowed("cancel", "processing")
    assert not allowed("complete", "pending")
    assert allowed("retry", "failed") and not allowed("retry", "canceled")
