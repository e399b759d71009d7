"""The Bot API stand-in's wire format: parameters in, errors out, Telegram's limits."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from kiln_dev.standins.telegram_updates import utf16_len

MiB = 1024 * 1024
PHOTO_MAX_BYTES = 10 * MiB
PHOTO_MAX_SIDES = 10_000
FILE_MAX_BYTES = 50 * MiB
TEXT_MAX = 4096  # UTF-16 code units
CAPTION_MAX = 1024
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
NO_THREAD = "Bad Request: message thread not found"
JSON_PARAMS = ("reply_parameters", "allowed_updates", "reply_markup", "entities",
                "caption_entities", "link_preview_options")
BLOCKED = "Forbidden: bot was blocked by the user"

class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None,
                 migrate_to: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after
        self.migrate_to = migrate_to

    def parameters(self) -> dict[str, int]:
        found = {"retry_after": self.retry_after, "migrate_to_chat_id": self.migrate_to}
        return {k: v for k, v in found.items() if v is not None}


@dataclass
class Fault:
    method: str  # a method name, or "*"
    chat_id: int | None
    error_code: int
    description: str
    retry_after: int | None
    remaining: int


@dataclass
class Slow:
    method: str  # a method name, or "*"
    chat_id: int | None
    seconds: float
    remaining: int | None  # None: until cleared


@dataclass
class Forum:
    topics: dict[int, str] = field(default_factory=dict)



def read_params(request: Request) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    params: dict[str, Any] = dict(request.args.items())
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
        return params, {}
    params.update(request.form.items())
    files: dict[str, dict[str, Any]] = {}
    for field_name, storage in request.files.items():
        digest, size, head = hashlib.sha256(), 0, b""
        while chunk := storage.stream.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < 24:
                head += chunk[:24]
        info: dict[str, Any] = {"field": field_name, "name": storage.filename or "",
                                "content_type": storage.mimetype, "size": size,
                                "sha256": digest.hexdigest()}
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            info["width"], info["height"] = struct.unpack(">II", head[16:24])
        files[field_name] = info
    return params, files


def checked_text(p: dict[str, Any]) -> str:
    text = str(p.get("text") or "")
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if utf16_len(text) > TEXT_MAX:
        raise ApiError(400, "Bad Request: message is too long")
    return text


def check_caption(p: dict[str, Any]) -> None:
    if utf16_len(str(p.get("caption") or "")) > CAPTION_MAX:
        raise ApiError(400, "Bad Request: message caption is too long")


def decoded(name: str, value: Any) -> Any:
    """A JSON-valued parameter sent as a form field, decoded as Telegram does."""
    if name in JSON_PARAMS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def json_response(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
