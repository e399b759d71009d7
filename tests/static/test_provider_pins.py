"""infra/versions.tf pins each provider to the minor version that tfcheck validates.

``make test`` runs ``../shared/tools/tfcheck`` on infra/ against the real provider schemas
of one release each; a pin to that release's minor (``~> X.Y.0``: any patch of it) keeps a
deploy on the provider version the checks were made against.
"""

from __future__ import annotations

import gzip
import json
import re

import hcl2
from tf_config import INFRA, REPO, normalise

TFCHECK_SCHEMAS = REPO.parent / "shared" / "tools" / "tfcheck" / "schema"

#: The versions tfcheck's schema holds (its README: google + google-beta 6.50.0, archive
#: 2.7.1). Used as they are when ../shared is not beside the repository; when it is, the
#: schema files must agree, so a tfcheck upgrade that moves the pins fails here first.
VALIDATED = {
    "hashicorp/google": "6.50.0",
    "hashicorp/google-beta": "6.50.0",
    "hashicorp/archive": "2.7.1",
}


def validated_versions() -> dict[str, str]:
    """``{"hashicorp/google": "6.50.0", ...}`` from tfcheck's schema files, else VALIDATED."""
    files = sorted(TFCHECK_SCHEMAS.glob("*.json*")) if TFCHECK_SCHEMAS.is_dir() else []
    if not files:
        return dict(VALIDATED)
    versions: dict[str, str] = {}
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            schemas = json.load(f)["provider_schemas"]
        for address, schema in schemas.items():
            versions["/".join(address.split("/")[-2:])] = schema["version"]
    return versions


def required_providers() -> dict[str, dict[str, str]]:
    with (INFRA / "versions.tf").open() as f:
        terraform = normalise(hcl2.load(f))["terraform"]
    providers: dict[str, dict[str, str]] = {}
    for block in terraform:
        for entry in block.get("required_providers", []):
            providers.update(entry)
    return providers


def test_hard_coded_versions_match_tfcheck() -> None:
    """Given tfcheck's schema beside the repository, then it holds exactly VALIDATED's
    providers and versions (update both together)."""
    versions = validated_versions()
    for source, version in VALIDATED.items():
        assert versions.get(source) == version, (source, versions.get(source))


def test_each_provider_is_pinned_to_the_validated_minor() -> None:
    """Given infra/versions.tf, then google, google-beta and archive each have the
    constraint ``~> X.Y.0`` for the X.Y tfcheck validates, and no other provider is
    required."""
    versions = validated_versions()
    providers = required_providers()
    assert {p["source"] for p in providers.values()} == set(VALIDATED)
    for name, provider in providers.items():
        major, minor = versions[provider["source"]].split(".")[:2]
        assert provider.get("version") == f"~> {major}.{minor}.0", (name, provider.get("version"))


def test_modules_do_not_widen_the_pins() -> None:
    """Given each module under infra/modules, then a provider version constraint, if any,
    is the same as the root's (Terraform intersects constraints; a different one is either
    redundant or a conflict)."""
    root = {p["source"]: p.get("version") for p in required_providers().values()}
    for path in sorted((INFRA / "modules").glob("*/*.tf")):
        for found in re.finditer(r'source\s*=\s*"([^"]+)"\s*\n\s*version\s*=\s*"([^"]+)"',
                                 path.read_text()):
            source, version = found.groups()
            if source in root:
                assert version == root[source], (path.relative_to(REPO).as_posix(), source, version)
