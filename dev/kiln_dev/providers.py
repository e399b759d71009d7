"""Development generators: the offline provider with failures planted by the prompt.

Never deployed. The local stack's functions (``kiln_dev.functions``) use
:class:`ScriptedOfflineProvider` in place of ``offline``, so tests and demos can show
failures through the real pipeline:

- ``[fail:permanent]`` raises ``PermanentError(code="content_refused")``, as when a provider
  refuses a prompt;
- ``[fail:retryable]`` raises ``RetryableError(code="provider_unavailable")``, as when a
  provider is briefly down;
- ``[hang]`` never finishes (until the job is stopped), as a provider that stops answering.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NoReturn

from kiln.core.errors import CanceledError, PermanentError, RetryableError
from kiln.providers.base import Artifact, GenerationRequest, ProgressCallback, Provider
from kiln.providers.offline import TICK_SECONDS, OfflineProvider
from kiln.providers.registry import FACTORIES
from kiln.settings import Settings

FAILURES: dict[str, Callable[[], Exception]] = {
    "[fail:permanent]": lambda: PermanentError(
        "The provider refused this prompt.", code="content_refused"),
    "[fail:retryable]": lambda: RetryableError(
        "The provider is unavailable right now.", code="provider_unavailable"),
}


class ScriptedOfflineProvider(OfflineProvider):
    """``offline``, plus the prompt tokens above."""

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback,
                 should_stop: Callable[[], bool]) -> Artifact:
        prompt = request.prompt.lower()
        for token, error in FAILURES.items():
            if token in prompt:
                raise error()
        if "[hang]" in prompt:
            self._hang(should_stop)
        return super().generate(request, on_progress, should_stop)

    def _hang(self, should_stop: Callable[[], bool]) -> NoReturn:
        """A provider that never answers; only a stop (cancel, lost lease) ends it."""
        while not should_stop():
            self._sleep(TICK_SECONDS)
        raise CanceledError("Generation was stopped.")


def _scripted_offline(settings: Settings) -> Provider:
    return ScriptedOfflineProvider(image_seconds=settings.offline_image_seconds,
                                   model_seconds=settings.offline_model_seconds)


#: The product's provider factories with ``offline`` replaced by the scripted one.
DEV_PROVIDERS: Mapping[str, Callable[[Settings], Provider]] = {
    **FACTORIES, "offline": _scripted_offline}
