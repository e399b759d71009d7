"""Settings: one frozen object from the environment; secrets never shown."""

from __future__ import annotations

import pytest

from kiln.core.errors import ConfigError
from kiln.settings import ENV_VARS, Settings


def test_reads_types_and_defaults() -> None:
    """Given env vars, numbers are parsed and unset ones keep defaults."""
    s = Settings.from_env({"KILN_MAX_ATTEMPTS": "5", "KILN_LEASE_SECONDS": "30.5"})
    assert (s.max_attempts, s.lease_seconds, s.jobs_topic) == (5, 30.5, "kiln-jobs")


def test_secrets_are_redacted_in_repr() -> None:
    """A bot token in the environment never shows in repr or str."""
    s = Settings.from_env({"KILN_TELEGRAM_BOT_TOKEN": "123456:SECRET-TOKEN-VALUE"})
    assert "SECRET-TOKEN-VALUE" not in repr(s) and "SECRET-TOKEN-VALUE" not in str(s)
    assert s.secrets() == ["123456:SECRET-TOKEN-VALUE"]


def test_unsigned_tokens_are_refused_outside_local_mode() -> None:
    """FIREBASE_AUTH_EMULATOR_HOST without KILN_ENV=local is a configuration error."""
    with pytest.raises(ConfigError):
        Settings.from_env({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})
    assert Settings.from_env({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
                              "KILN_ENV": "local"}).local


def test_local_mode_is_refused_on_cloud_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """K_SERVICE (set by Cloud Run) with KILN_ENV=local is refused."""
    monkeypatch.setenv("K_SERVICE", "kiln-ingress")
    with pytest.raises(ConfigError):
        Settings.from_env({"KILN_ENV": "local"})


@pytest.mark.parametrize("env", [{"KILN_MAX_ATTEMPTS": "many"}, {"KILN_MAX_ATTEMPTS": "0"},
                                 {"KILN_LINK_TEMPLATE": "/jobs"}, {"KILN_ENV": "prod"}])
def test_bad_values_are_config_errors(env: dict[str, str]) -> None:
    """Wrong types or invalid values fail at start-up with a message naming the variable."""
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_every_env_var_maps_to_a_field() -> None:
    """ENV_VARS (the list infra is checked against) names only real settings."""
    names = set(Settings.__dataclass_fields__)
    assert all(attr in names for attr, _secret in ENV_VARS.values())


def test_meshy_models_must_be_named() -> None:
    """Given an empty Meshy model or texture model, then start-up refuses it by name
    (every create would otherwise be refused by Meshy, each user's job failing)."""
    for name in ("KILN_MESHY_MODEL", "KILN_MESHY_TEXTURE_MODEL"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: " "})
    assert Settings.from_env({"KILN_MESHY_MODEL": "meshy-6"}).meshy_model == "meshy-6"
