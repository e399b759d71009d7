"""Validation of new job requests (every channel): what may be asked, and how it is said.

Pure logic, no I/O. A refused request raises ``RequestError`` naming the bad field; the
HTTP edge answers it with its status, a chat with a polite reply.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.core.errors import RequestError
from kiln.core.job import ASPECT_RATIOS, KINDS, PROMPT_MAX


@dataclass(frozen=True)
class JobRequest:
    """A validated request for a new job."""

    kind: str
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Stable digest of what was asked, to tell a replay from a reused key."""
        canon = repr((self.kind, self.prompt, sorted(self.options.items())))
        return hashlib.sha256(canon.encode()).hexdigest()[:32]


_OPTION_RULES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "image": {"aspectRatio": str, "seed": int, "style": str},
    "model": {"imageUrl": str, "seed": int, "style": str, "texture": bool},
}


def parse_job_request(body: Any) -> JobRequest:
    """Validate a ``POST /v1/jobs`` body.

    Raises:
        RequestError: 400 with a message that names the bad field.
    """
    if not isinstance(body, Mapping):
        raise RequestError(400, "invalid_body", "The body must be a JSON object.")
    unknown = set(body) - {"kind", "prompt", "options"}
    if unknown:
        raise RequestError(400, "unknown_field", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    kind = body.get("kind")
    if kind not in KINDS:
        raise RequestError(400, "invalid_kind", "'kind' must be \"image\" or \"model\".")
    prompt = clean_prompt(body.get("prompt"))
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise RequestError(400, "invalid_options", "'options' must be an object.")
    return JobRequest(kind=kind, prompt=prompt, options=validate_options(kind, options))


def clean_prompt(prompt: Any) -> str:
    """Trim and check a prompt (1–1000 characters)."""
    if not isinstance(prompt, str):
        raise RequestError(400, "invalid_prompt", "'prompt' must be a string.")
    prompt = " ".join(prompt.split())
    if not prompt:
        raise RequestError(400, "invalid_prompt", "'prompt' must not be empty.")
    if len(prompt) > PROMPT_MAX:
        raise RequestError(
            400, "invalid_prompt", f"'prompt' must be at most {PROMPT_MAX} characters."
        )
    return prompt


def validate_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    rules = _OPTION_RULES[kind]
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in rules:
            allowed_names = ", ".join(sorted(rules))
            raise RequestError(
                400, "invalid_options",
                f"Unknown option '{name}' for kind '{kind}' (allowed: {allowed_names}).",
            )
        expected = rules[name]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            type_name = getattr(expected, "__name__", str(expected))
            raise RequestError(400, "invalid_options", f"Option '{name}' must be a {type_name}.")
        out[name] = value
    if "aspectRatio" in out and out["aspectRatio"] not in ASPECT_RATIOS:
        raise RequestError(
            400, "invalid_options", f"'aspectRatio' must be one of {', '.join(ASPECT_RATIOS)}."
        )
    if "seed" in out and not 0 <= out["seed"] < 2**31:
        raise RequestError(400, "invalid_options", "'seed' must be between 0 and 2147483647.")
    if "imageUrl" in out:
        # The full check (public address, redirects, size) runs before a provider sees it.
        url = urllib.parse.urlsplit(out["imageUrl"].strip())
        if len(out["imageUrl"]) > 2048 or url.scheme not in ("https", "http") or not url.hostname:
            raise RequestError(400, "invalid_options",
                               "'imageUrl' must be an https URL of at most 2048 characters.")
    if "style" in out and not 0 < len(out["style"]) <= 64:
        raise RequestError(400, "invalid_options", "'style' must be 1 to 64 characters.")
    return out


