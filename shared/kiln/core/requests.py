"""Validation of new job requests (every channel): what may be asked, and how it is said.

The request is a pydantic model, a union on ``kind`` (:class:`ImageJobRequest`,
:class:`ModelJobRequest`), each with its own options model; the JSON Schema, TypeScript
and OpenAPI of the contract are generated from these models (``kiln_dev.schema``).

Pure logic, no I/O. A refused request raises :class:`kiln.core.errors.ValidationError`
with a stable code (``invalid_body``, ``unknown_field``, ``invalid_kind``,
``invalid_prompt``, ``invalid_options``) and a message that names the bad field; the HTTP
edge answers it with 400, a chat with a polite reply.
"""

from __future__ import annotations

import hashlib
import unicodedata
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeAlias

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypeAliasType

from kiln.core.errors import ValidationError
from kiln.core.job import PROMPT_MAX


@dataclass(frozen=True)
class JobRequest:
    """A validated request for a new job."""

    kind: str
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The job's own webhook URL (``POST /v1/jobs``' ``webhook``, recorded in the job's
    #: server state): part of what was asked, so of the fingerprint.
    webhook: str | None = None

    def fingerprint(self) -> str:
        """Stable digest of what was asked, to tell a replay from a reused key. A request
        without a webhook digests as before webhooks were part of it, so a job stored
        then is still replayed by its key."""
        asked: tuple[Any, ...] = (self.kind, self.prompt, sorted(self.options.items()))
        if self.webhook is not None:
            asked = (*asked, ("webhook", self.webhook))
        return hashlib.sha256(repr(asked).encode()).hexdigest()[:32]


# --- field types ------------------------------------------------------------------------

def _integral(value: Any) -> Any:
    """A float with no fraction is an integer, as in JSON Schema (``7.0`` is ``7``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _collapse(value: Any) -> Any:
    return " ".join(value.split()) if isinstance(value, str) else value


#: Bidirectional embeddings, overrides and isolates: they reorder what a reader sees.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Letters that render as nothing (Hangul and Braille fillers, the Mongolian separator).
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def _visible(value: str) -> str:
    """Refuse text a user cannot see as it is: control characters (C0, DEL, C1), lone
    surrogates, bidirectional controls, and text with nothing visible in it (only spaces,
    format characters such as U+200B, combining marks or blank fillers)."""
    # Printable ASCII (most text) holds no control or format character: visible unless
    # it is all spaces. Anything else is read character by character.
    ascii_text = value.isascii() and value.isprintable()
    if not (value.strip(" ") if ascii_text else _visible_characters(value)):
        raise PydanticCustomError(
            "invisible", "must contain a visible character, not only spaces or invisible ones")
    return value


def _visible_characters(value: str) -> bool:
    """Whether ``value`` holds a visible character, read character by character; raises
    on a control character, a lone surrogate or a bidirectional control."""
    seen = False
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            raise PydanticCustomError("control_characters", "must not contain control characters")
        if category == "Cs":
            raise PydanticCustomError("string_unicode", "must be valid Unicode text")
        if char in BIDI_CONTROLS:
            raise PydanticCustomError(
                "bidi_control", "must not contain bidirectional controls (U+202A-U+202E, "
                "U+2066-U+2069): they reorder what a reader sees")
        seen = seen or (category[0] in "LNPS" and char not in BLANK_LETTERS)
    return seen


def _http_url(value: str) -> str:
    # The form only: the rules (https, no credentials, public literal) apply at submit
    # (kiln.runtime.accept, kiln.core.urls), the lookup before a provider sees it.
    try:
        url = urllib.parse.urlsplit(value.strip())
        ok = url.scheme in ("https", "http") and bool(url.hostname)
    except ValueError:  # e.g. an unbalanced "[" in the host
        ok = False
    if not ok:
        raise PydanticCustomError("url", "must be an https URL of at most 2048 characters")
    return value


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


#: What to generate: whitespace collapsed, then 1–1000 characters (code points), some visible.
Prompt: TypeAlias = Annotated[
    str, BeforeValidator(_collapse), Strict(), Field(
        min_length=1, max_length=PROMPT_MAX,
        description="What to generate; whitespace collapsed; length in Unicode code points."),
    AfterValidator(_visible),
]
#: A JSON integer (not a bool, not a string; ``7.0`` counts).
Seed: TypeAlias = Annotated[int, Strict(), Field(
    ge=0, le=2**31 - 1, description="Same prompt + seed gives the same result (where the provider can)."),
    BeforeValidator(_integral)]
Style: TypeAlias = Annotated[str, Strict(), Field(
    min_length=1, max_length=64,
    description="A style hint passed to the provider; length in Unicode code points."),
    AfterValidator(_visible)]

ImageUrl: TypeAlias = Annotated[str, Strict(), Field(
    min_length=1, max_length=2048, description="Image-to-3D: a public https URL of the source "
    "image: no user name or password, not a loopback, link-local, private or metadata address "
    "(else 400 invalid_image_url); a host that does not exist fails the job."),
    AfterValidator(_visible), AfterValidator(_http_url)]


#: The default of a field that may be absent but is never null: pydantic does not validate
#: defaults, absent fields stay out of ``model_dump(exclude_unset=True)`` (so out of
#: JobRequest.options), and the JSON Schema lists the field as optional, not nullable.
ABSENT: Any = None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageOptions(_Model):
    """Options when kind is `image`; all optional."""

    aspectRatio: Annotated[Literal["1:1", "4:3", "3:4", "16:9", "9:16"], Field(
        description="Image shape.")] = ABSENT
    seed: Seed = ABSENT
    style: Style = ABSENT


class ModelOptions(_Model):
    """Options when kind is `model`; all optional."""

    imageUrl: ImageUrl = ABSENT
    seed: Seed = ABSENT
    style: Style = ABSENT
    texture: Annotated[bool, Strict(), Field(description="Generate textures (slower).")] = ABSENT


class ImageJobRequest(_Model):
    """Body of POST /v1/jobs for an image (a PNG)."""

    kind: Literal["image"]
    prompt: Prompt
    options: Annotated[ImageOptions, BeforeValidator(_none_is_empty)] = ImageOptions()


class ModelJobRequest(_Model):
    """Body of POST /v1/jobs for a 3D model (a GLB)."""

    kind: Literal["model"]
    prompt: Prompt
    options: Annotated[ModelOptions, BeforeValidator(_none_is_empty)] = ModelOptions()


CreateJobRequest = TypeAliasType("CreateJobRequest", Annotated[
    ImageJobRequest | ModelJobRequest,
    Field(discriminator="kind", description="Body of POST /v1/jobs."),
])
REQUEST_MODELS: dict[str, type[ImageJobRequest] | type[ModelJobRequest]] = {
    "image": ImageJobRequest, "model": ModelJobRequest}
OPTION_MODELS: dict[str, type[ImageOptions] | type[ModelOptions]] = {
    "image": ImageOptions, "model": ModelOptions}
_REQUEST = pydantic.TypeAdapter(CreateJobRequest)
_PROMPT = pydantic.TypeAdapter(Prompt)


# --- the entry points -------------------------------------------------------------------

def parse_job_request(body: Any) -> JobRequest:
    """Validate a ``POST /v1/jobs`` body (any JSON value).

    Raises:
        ValidationError: with the code and a message that names the bad field.
    """
    try:
        model = _REQUEST.validate_python(body)
    except pydantic.ValidationError as exc:
        raise _refusal(body, exc.errors(include_url=False, include_input=False)) from None
    return JobRequest(kind=model.kind, prompt=model.prompt,
                      options=model.options.model_dump(exclude_unset=True))


def clean_prompt(prompt: Any) -> str:
    """Collapse whitespace in a prompt and check it (1–1000 visible characters)."""
    try:
        return _PROMPT.validate_python(prompt)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise min((_classify(e, "", ("prompt", *e["loc"])) for e in errors), key=_rank) from None


# --- pydantic's errors → ours -----------------------------------------------------------

_TYPES = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
          "bool_type": "true or false", "model_type": "an object", "dict_type": "an object",
          "model_attributes_type": "an object"}
_EXTRA = ("extra_forbidden", "invalid_key")
_ORDER = ("invalid_body", "unknown_field", "invalid_kind", "invalid_prompt", "invalid_options")
_TOP_FIELDS = sorted({name for model in REQUEST_MODELS.values() for name in model.model_fields})


def shown_name(name: Any, limit: int = 40) -> str:
    """A field name fit for a message (a caller may send any key)."""
    text = name if isinstance(name, str) and name.isprintable() else ascii(name).strip("'")
    return text if len(text) <= limit else text[:limit] + "…"


def _predicate(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty" if ctx.get("min_length") == 1 else \
            f"must be at least {ctx.get('min_length')} characters"
    if kind in ("too_long", "string_too_long"):
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_unicode":
        return "must be valid Unicode text"
    return str(error["msg"]).rstrip(".")  # our own PydanticCustomError messages


def _unknown_fields(names: Iterable[Any]) -> ValidationError:
    shown = sorted(shown_name(n) for n in names)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return ValidationError("unknown_field", f"Unknown field(s): {', '.join(shown[:5])}{more} "
                           f"(allowed: {', '.join(_TOP_FIELDS)}).")


def _classify(error: ErrorDetails, kind: str, path: tuple[int | str, ...]) -> ValidationError:
    """One pydantic error at ``path`` (below the request of ``kind``) as ours."""
    if not path:
        return ValidationError("invalid_body", "The body must be a JSON object.")
    name = str(path[0])
    if name == "prompt":
        return ValidationError("invalid_prompt", f"'prompt' {_predicate(error)}.", field="prompt")
    if name != "options":
        return ValidationError("invalid_body", f"'{shown_name(name)}' {_predicate(error)}.", field=name)
    if len(path) == 1 and error["type"] == "string_unicode":  # a key, not a value
        return ValidationError("invalid_options", "An option name is not valid Unicode text.",
                               field="options")
    if len(path) == 1:
        return ValidationError("invalid_options", "'options' must be an object.", field="options")
    option = shown_name(path[1])
    if error["type"] in _EXTRA and len(path) == 2:
        allowed = ", ".join(OPTION_MODELS[kind].model_fields)
        return ValidationError("invalid_options", f"Unknown option '{option}' for kind '{kind}' "
                               f"(allowed: {allowed}).", field=f"options.{option}")
    return ValidationError("invalid_options", f"Option '{option}' {_predicate(error)}.",
                           field=f"options.{option}")


def _rank(error: ValidationError) -> int:
    return _ORDER.index(error.code)


def _refusal(body: Any, errors: list[ErrorDetails]) -> ValidationError:
    """The one error to report, in the order body, unknown fields (all of them), kind,
    prompt, options."""
    if any(e["type"] in ("union_tag_not_found", "union_tag_invalid") for e in errors):
        extra = set(body) - set(_TOP_FIELDS) if isinstance(body, dict) else set()
        if extra:
            return _unknown_fields(extra)
        kinds = " or ".join(f'"{k}"' for k in REQUEST_MODELS)
        return ValidationError("invalid_kind", f"'kind' must be {kinds}.", field="kind")
    unknown = [e["loc"][1] for e in errors if e["type"] in _EXTRA and len(e["loc"]) == 2]
    if unknown:
        return _unknown_fields(unknown)
    if any(e["type"] == "string_unicode" and len(e["loc"]) == 1 for e in errors):
        return ValidationError("unknown_field", "A field name is not valid Unicode text.")
    # a discriminated union puts the tag first: ("image", "options", "seed")
    return min((_classify(e, str(e["loc"][0]) if e["loc"] else "", e["loc"][1:]) for e in errors),
               key=_rank)
