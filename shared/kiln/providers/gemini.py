"""Gemini image generation (``google-genai``) as a :class:`~kiln.providers.base.SyncProvider`.

One ``models.generate_content`` call with ``response_modalities=["IMAGE"]`` (REST:
``POST {base}/v1beta/models/{model}:generateContent``, key in ``x-goog-api-key``); the
image arrives inline (``part.inline_data``) and is re-encoded as PNG when it is JPEG or
WebP. The call runs on a helper thread so the job keeps reporting (which renews its
lease) and a cancel is noticed while the model works; the SDK's own retries are off —
Kiln's job retries own that.

Errors: 429 → retryable (``retry_after`` from ``Retry-After`` or the ``RetryInfo``
detail), except a quota waiting cannot clear — a ``QuotaFailure`` naming a per-day quota,
or a limit of 0 — which fails the job (``provider_quota_exhausted``; the quota ids are
logged, not shown); 5xx and timeouts → retryable, a blocked prompt or image
(``prompt_feedback.block_reason``, ``finish_reason`` SAFETY and friends, or a 400 that says
so) → ``content_refused``, 401/403 → ``provider_auth``, 404 (the model is retired or
misspelled) → ``provider_model_not_found``. Why: docs/providers.md#errors.
``GOOGLE_GEMINI_BASE_URL`` (read by the SDK) points it at a local stand-in.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from kiln import log
from kiln.core.errors import CanceledError, KilnError, PermanentError, RetryableError
from kiln.providers.base import Artifact, GenerationRequest, ProgressCallback
from kiln.providers.http import as_png, error_for_status, short
from kiln.settings import Settings

#: The SDK sends through httpx, or through its fork httpx2 when that is installed.
_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException,)
_NETWORK: tuple[type[BaseException], ...] = (httpx.HTTPError,)
try:
    import httpx2

    _TIMEOUTS += (httpx2.TimeoutException,)
    _NETWORK += (httpx2.HTTPError,)
except ImportError:  # pragma: no cover - depends on the installed SDK extras
    pass

logger = log.get("providers.gemini")

LABEL = "image generation service"
REFUSED_REASONS = frozenset({
    "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "RECITATION", "IMAGE_RECITATION", "MODEL_ARMOR", "JAILBREAK",
})
REFUSED_MESSAGE = ("The image service declined this prompt for safety reasons. "
                   "Try describing it differently.")
DAY_QUOTA_MESSAGE = "The image service has used up its quota for today. Please try again later."
NO_QUOTA_MESSAGE = ("The image service has no quota for making images at the moment. "
                    "Please try again later.")
NO_MODEL_MESSAGE = ("The image service is not set up correctly: its image model is not "
                    "available. Please try again later.")
#: A quota id that counts per day ("GenerateRequestsPerDayPerProjectPerModel-FreeTier").
_DAILY = re.compile(r"PerDay|Daily")
#: Google's message names each quota hit: "… metric: …, limit: 0, model: …".
_LIMIT_ZERO = re.compile(r"\blimit: ?0(?![\d.])")
TICK_SECONDS = 1.0
ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


class GeminiImageProvider:
    """Text-to-image with a Gemini image model."""

    name = "gemini"

    def __init__(self, settings: Settings, *, timeout: float = 150.0, base_url: str | None = None,
                 client: genai.Client | None = None, max_bytes: int | None = None) -> None:
        self.model = settings.gemini_model
        self.timeout = timeout
        self.max_bytes = max_bytes or settings.max_artifact_bytes
        self._key = settings.gemini_api_key
        self._client = client or genai.Client(
            api_key=settings.gemini_api_key or "unset",
            http_options=types.HttpOptions(base_url=base_url, api_version="v1beta",
                                           timeout=int(timeout * 1000)),
        )

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback,
                 should_stop: Callable[[], bool]) -> Artifact:
        if request.kind != "image":
            raise PermanentError("This provider only makes images.", code="invalid_kind")
        config = types.GenerateContentConfig(response_modalities=["IMAGE"], candidate_count=1)
        aspect = request.options.get("aspectRatio")
        if aspect in ASPECTS:
            config.image_config = types.ImageConfig(aspect_ratio=str(aspect))
        if isinstance(request.options.get("seed"), int):
            config.seed = int(request.options["seed"])
        response = self._call(request.prompt, config, on_progress, should_stop)
        data, mime = _image(response)
        png = as_png(data)
        if len(png) > self.max_bytes:
            raise PermanentError("The image is larger than this service accepts.",
                                 code="artifact_too_large")
        provenance: dict[str, Any] = {"provider": self.name,
                                      "model": str(response.model_version or self.model)}
        if response.response_id:
            provenance["taskId"] = response.response_id
        if mime != "image/png":
            provenance["convertedFrom"] = mime
        usage = response.usage_metadata
        if usage is not None and usage.total_token_count:
            provenance["tokens"] = usage.total_token_count
        on_progress(90, "generating")
        return Artifact.from_bytes("image", png, provenance=provenance)

    def _call(self, prompt: str, config: types.GenerateContentConfig,
              on_progress: ProgressCallback,
              should_stop: Callable[[], bool]) -> types.GenerateContentResponse:
        """The SDK call on a helper thread, reporting meanwhile; errors mapped to Kiln's."""
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["response"] = self._client.models.generate_content(
                    model=self.model, contents=prompt, config=config)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True, name="gemini-call")
        started = time.monotonic()
        thread.start()
        while thread.is_alive():
            thread.join(TICK_SECONDS)
            elapsed = time.monotonic() - started
            if should_stop():
                raise CanceledError("Generation was stopped.")  # the thread ends by its timeout
            if elapsed > self.timeout + 5:
                raise RetryableError("The image service did not answer in time.",
                                     code="provider_timeout")
            # An easing curve: moves early, never reaches 90 before the answer comes.
            on_progress(5 + int(80 * (1 - math.exp(-elapsed / 20))), "generating")
        if "error" in outcome:
            raise self._translate(outcome["error"]) from outcome["error"]
        return outcome["response"]  # type: ignore[no-any-return]

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, KilnError):
            return exc
        if isinstance(exc, genai_errors.APIError):
            return _api_error(exc, self._key, self.model)
        if isinstance(exc, _TIMEOUTS):
            return RetryableError("The image service did not answer in time.",
                                  code="provider_timeout")
        if isinstance(exc, _NETWORK):
            return RetryableError("The image service could not be reached.",
                                  code="provider_unavailable")
        if isinstance(exc, ValueError):  # an answer the SDK could not read (not JSON, not
            # its shape: pydantic's ValidationError is a ValueError): a blip, as elsewhere
            return RetryableError("The image service sent an unreadable answer.",
                                  code="provider_unavailable")
        return exc


def _api_error(exc: genai_errors.APIError, key: str, model: str) -> KilnError:
    status = int(exc.code or 500)
    full = str(exc.message or "")
    if key:
        full = full.replace(key, "***")
    message = short(full, 200)
    if status == 400 and re.search(r"api[ _]key", message, re.I):
        status = 401  # Gemini answers a wrong key with 400 API_KEY_INVALID
    elif status == 400 and re.search(r"safety|blocked|prohibited|policy", message, re.I):
        return PermanentError(REFUSED_MESSAGE, code="content_refused")
    elif status == 429 and (quota := _quota_error(exc.details, full)) is not None:
        return quota
    elif status == 404:  # generateContent names no task: the model is what is not found
        log.event(logger, "gemini model not found", logging.ERROR, model=model, detail=message)
        return PermanentError(NO_MODEL_MESSAGE, code="provider_model_not_found")
    headers = dict(exc.response.headers) if hasattr(exc.response, "headers") else {}
    error = error_for_status(status, LABEL, detail=message, headers=headers)
    if isinstance(error, RetryableError) and error.retry_after is None:
        error.retry_after = _retry_delay(exc.details)
    return error


def _quota_error(details: Any, message: str) -> PermanentError | None:
    """The failure for a 429 that waiting minutes cannot clear — a ``QuotaFailure`` naming
    a per-day quota, or a quota of 0 — else None (a per-minute limit: retry)."""
    violations = [v for item in _details(details) if str(item.get("@type", "")).endswith(
        "google.rpc.QuotaFailure") for v in item.get("violations") or [] if isinstance(v, dict)]
    ids = [str(v.get("quotaId") or "") for v in violations]
    zero = (any(str(v.get("quotaValue")) == "0" for v in violations)
            or _LIMIT_ZERO.search(message) is not None)
    if not zero and not any(_DAILY.search(quota_id) for quota_id in ids):
        return None
    log.event(logger, "gemini quota exhausted", logging.WARNING, quotaIds=ids,
              quotaMetrics=sorted({str(v.get("quotaMetric") or "") for v in violations}),
              limitZero=zero, detail=short(message, 1000))
    return PermanentError(NO_QUOTA_MESSAGE if zero else DAY_QUOTA_MESSAGE,
                          code="provider_quota_exhausted")


def _details(body: Any) -> list[dict[str, Any]]:
    """The ``error.details`` items of a Google error body."""
    error = body.get("error") if isinstance(body, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]


def _retry_delay(details: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("12s") from a Google error body, when present."""
    for item in _details(details):
        delay = item.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return min(3600.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _image(response: types.GenerateContentResponse) -> tuple[bytes, str]:
    """The first inline image, or the reason there is none."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        raise PermanentError(REFUSED_MESSAGE, code="content_refused")
    candidates = response.candidates or []
    for candidate in candidates:
        for part in (candidate.content.parts or []) if candidate.content else []:
            blob = part.inline_data
            if blob is not None and blob.data and str(blob.mime_type or "").startswith("image/"):
                return blob.data, str(blob.mime_type)
    reasons = {_name(c.finish_reason) for c in candidates if c.finish_reason}
    if reasons & REFUSED_REASONS:
        raise PermanentError(REFUSED_MESSAGE, code="content_refused")
    raise PermanentError("The image service answered without an image. Try rephrasing the prompt.",
                         code="provider_no_image")


def _name(reason: Any) -> str:
    return str(getattr(reason, "value", reason)).upper()
