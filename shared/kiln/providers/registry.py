"""Provider selection by configuration: ``KILN_IMAGE_PROVIDER`` / ``KILN_MODEL_PROVIDER``.

``offline`` (the default, no network) makes both kinds; ``gemini`` makes images;
``meshy`` makes models; ``taskserver`` (any server speaking
``docs/taskserver-protocol.md``) makes both. Adapters are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kiln.core.errors import ConfigError
from kiln.providers.base import Provider
from kiln.settings import Settings


def _offline(settings: Settings) -> Provider:
    from kiln.providers.offline import OfflineProvider

    return OfflineProvider(
        image_seconds=settings.offline_image_seconds, model_seconds=settings.offline_model_seconds
    )


def _gemini(settings: Settings) -> Provider:
    from kiln.providers.gemini import GeminiImageProvider

    _require(settings.gemini_api_key, "KILN_GEMINI_API_KEY", "gemini")
    return GeminiImageProvider(settings)


def _meshy(settings: Settings) -> Provider:
    from kiln.providers.meshy import MeshyProvider

    _require(settings.meshy_api_key, "KILN_MESHY_API_KEY", "meshy")
    return MeshyProvider(settings)


def _taskserver(settings: Settings) -> Provider:
    from kiln.providers.taskserver import TaskServerProvider

    _require(settings.taskserver_url, "KILN_TASKSERVER_URL", "taskserver")
    return TaskServerProvider(settings)


def _require(value: str, var: str, name: str) -> None:
    if not value:
        raise ConfigError(f"{var} must be set to use the {name} provider")


#: provider name → factory.
FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "offline": _offline,
    "gemini": _gemini,
    "meshy": _meshy,
    "taskserver": _taskserver,
}

#: provider name → the kinds it makes.
KINDS: dict[str, frozenset[str]] = {
    "offline": frozenset({"image", "model"}),
    "gemini": frozenset({"image"}),
    "meshy": frozenset({"model"}),
    "taskserver": frozenset({"image", "model"}),
}


def build_provider(name: str, settings: Settings, kind: str | None = None, *,
                   factories: Mapping[str, Callable[[Settings], Provider]] | None = None) -> Provider:
    """The provider called ``name``; with ``kind``, refuse one that cannot make it.

    Raises:
        ConfigError: unknown name, missing key, or a provider configured for a kind it
            does not make.
    """
    factories = FACTORIES if factories is None else factories
    try:
        factory = factories[name]
    except KeyError:
        known = ", ".join(sorted(factories))
        raise ConfigError(f"Unknown provider {name!r} (known: {known})") from None
    if kind is not None and kind not in KINDS[name]:
        raise ConfigError(f"Provider {name!r} does not make {kind}s")
    return factory(settings)
