"""The job: its statuses, the transition table, and validation of new requests.

Pure logic, no I/O. The Firestore side of each transition lives in ``kiln.lifecycle``.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import RequestError

PROMPT_MAX = 1000
KINDS = ("image", "model")
CHANNELS = ("app", "telegram", "api")
#: ``platform`` of a device document (users/{uid}/devices/{deviceId}).
PLATFORMS = ("android", "ios", "web")
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})

#: transition name → (statuses it may start from, status it ends in)
TRANSITIONS: dict[str, tuple[frozenset[JobStatus], JobStatus]] = {
    "claim": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.PROCESSING),
    "report_progress": (frozenset({JobStatus.PROCESSING}), JobStatus.PROCESSING),
    "release": (frozenset({JobStatus.PROCESSING}), JobStatus.PENDING),
    "complete": (frozenset({JobStatus.PROCESSING}), JobStatus.COMPLETED),
    "fail": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.FAILED),
    "cancel": (frozenset({JobStatus.PENDING, JobStatus.PROCESSING}), JobStatus.CANCELED),
    "retry": (frozenset({JobStatus.FAILED}), JobStatus.PENDING),
}


def allowed(transition: str, current: JobStatus | str) -> bool:
    """Whether ``transition`` may start from ``current``."""
    sources, _target = TRANSITIONS[transition]
    return JobStatus(current) in sources


def target(transition: str) -> JobStatus:
    return TRANSITIONS[transition][1]


# --- new jobs -------------------------------------------------------------------------


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


def new_job_id(uid: str, idempotency_key: str | None = None) -> str:
    """A random id, or one derived from (uid, key) so a replayed request maps to one job.

    Ids are never sequential: sequential ids hot-spot Firestore.
    """
    if idempotency_key is None:
        return secrets.token_hex(10)
    return hashlib.sha256(f"{uid}\x00{idempotency_key}".encode()).hexdigest()[:20]


def is_valid_job_id(job_id: str) -> bool:
    return 8 <= len(job_id) <= 64 and all(c.isalnum() or c in "-_" for c in job_id)


@dataclass(frozen=True)
class Device:
    """Where one app instance receives pushes: its FID, or (legacy) its registration token."""

    id: str
    fid: str = ""
    token: str = ""

    @classmethod
    def from_doc(cls, device_id: str, doc: Mapping[str, Any]) -> Device | None:
        """The device of a ``users/{uid}/devices/{deviceId}`` document (None if it has no
        usable address). The FID wins if an old document somehow carries both."""
        fid, token = doc.get("fid"), doc.get("token")
        if isinstance(fid, str) and fid:
            return cls(device_id, fid=fid)
        if isinstance(token, str) and token:
            return cls(device_id, token=token)
        return None
