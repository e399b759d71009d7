"""``kiln keys create|list|revoke`` (issue 13, item 1): the secret is printed once, on its
own line, and never again; list shows prefixes; revoke marks the key."""

from __future__ import annotations

import pytest

from kiln.compose import Services
from kiln.core.keys import hash_secret, parse_key
from kiln.settings import Settings
from kiln_dev.cli import main
from kiln_dev.fakes import FakeClock
from kiln_dev.fakes_api import InMemoryKeyStore


@pytest.fixture
def services() -> Services:
    return Services(Settings(project="demo-keys"), keys=InMemoryKeyStore(), clock=FakeClock())


def test_create_list_revoke(services: Services, capsys: pytest.CaptureFixture[str]) -> None:
    # when an operator creates a key
    assert main(["keys", "create", "--tenant", "acme", "--scopes", "submit,read",
                 "--plan", "pro"], services=lambda: services) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    # then stdout is the key alone, and only its hash is stored
    parsed = parse_key(key)
    assert parsed is not None
    key_id, secret = parsed
    stored = services.keys.get_key(key_id)
    assert stored is not None and stored.secret_hash == hash_secret(secret)
    assert stored.scopes == frozenset({"submit", "read"})
    assert services.keys.get_tenant("acme").plan == "pro"  # type: ignore[union-attr]
    # when it lists keys: the prefix shows, the secret never does
    assert main(["keys", "list"], services=lambda: services) == 0
    listing = capsys.readouterr().out
    assert f"kiln_{key_id}" in listing and secret not in listing and "active" in listing
    # when it revokes the key (by its prefix)
    assert main(["keys", "revoke", f"kiln_{key_id}"], services=lambda: services) == 0
    assert services.keys.get_key(key_id).revoked  # type: ignore[union-attr]
    assert main(["keys", "revoke", "0123456789ab"], services=lambda: services) == 1


def test_create_refuses_a_bad_tenant_or_scope(services: Services) -> None:
    assert main(["keys", "create", "--tenant", "Bad/Name"], services=lambda: services) == 2
    assert main(["keys", "create", "--tenant", "acme", "--scopes", "admin"],
                services=lambda: services) == 2
    assert services.keys.list_keys() == []


def test_create_refuses_an_unknown_plan(services: Services,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A plan name with a typo was saved on the tenant, whose jobs then ran on the
    default plan with only a log line: it is refused, naming the plans."""
    assert main(["keys", "create", "--tenant", "acme", "--plan", "por"],
                services=lambda: services) == 2
    assert "unknown plan 'por'" in capsys.readouterr().err
    assert services.keys.list_keys() == [] and services.keys.get_tenant("acme") is None
