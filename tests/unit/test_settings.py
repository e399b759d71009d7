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


@pytest.mark.parametrize("env", [
    {"KILN_MAX_ATTEMPTS": "many"}, {"KILN_MAX_ATTEMPTS": "0"}, {"KILN_LINK_TEMPLATE": "/jobs"},
    {"KILN_ENV": "prod"}, {"KILN_LEASE_SECONDS": "nan"}, {"KILN_JOB_MAX_AGE_SECONDS": "inf"},
    {"KILN_QUEUE_TTL_SECONDS": "nan"}, {"KILN_WORKER_BUDGET_SECONDS": "-5"},
    {"KILN_PENDING_REPUBLISH_SECONDS": "0"}, {"KILN_POLL_FIRST_SECONDS": "-1"},
    {"KILN_MAX_BODY_BYTES": "0"}, {"KILN_JOB_MAX_AGE_SECONDS": "0"},
    {"KILN_LOG_LEVEL": "VERBOSE"}])
def test_bad_values_are_config_errors(env: dict[str, str]) -> None:
    """Wrong types or invalid values fail at start-up with a message naming the variable
    (a NaN lease passed every check, then failed each claim)."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert next(iter(env)) in str(caught.value)


def test_a_wrong_setting_stops_a_function_at_its_start_naming_the_variable() -> None:
    """Given KILN_MAX_ATTEMPTS=abc, when the platform imports a function's entry point,
    then the import fails with the variable's name (the function never serves), instead
    of every request answering 500 later."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
           "KILN_MAX_ATTEMPTS": "abc"}
    for function in ("ingress", "worker"):  # (the sweeper's entry point is the same)
        code = f"import sys; sys.path.insert(0, {str(repo / 'functions' / function)!r}); import main"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=repo, env=env, check=False)
        assert done.returncode != 0 and "KILN_MAX_ATTEMPTS" in done.stderr, function
    env = {**env, "KILN_MAX_ATTEMPTS": "3", "KILN_IMAGE_PROVIDER": "gemini"}  # and no key
    code = f"import sys; sys.path.insert(0, {str(repo / 'functions' / 'worker')!r}); import main"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=repo, env=env, check=False)
    assert done.returncode != 0 and "KILN_GEMINI_API_KEY" in done.stderr


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
