"""Provider selection by configuration: ``KILN_IMAGE_PROVIDER`` / ``KILN_MODEL_PROVIDER``."""

from __future__ import annotations

from collections.abc import Callable

from kiln.errors import ConfigError
from kiln.providers.base import Provider
from kiln.settings import Settings


def _offline(settings: Settings) -> Provider:
    from kiln.providers.offline import OfflineProvider

    return OfflineProvider(
        image_seconds=settings.offline_image_seconds, model_seconds=settings.offline_model_seconds
    )


#: provider name → factory. Real providers register here.
FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "offline": _offline,
}


def build_provider(name: str, settings: Settings) -> Provider:
    try:
        factory = FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(FACTORIES))
        raise ConfigError(f"Unknown provider {name!r} (known: {known})") from None
    return factory(settings)
