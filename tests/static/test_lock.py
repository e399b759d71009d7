"""requirements/functions.lock is current with pyproject's runtime dependencies.

Offline and cheap: it reads the lock as ``make lock`` (uv pip compile --generate-hashes)
writes it, one ``name==version`` entry with its ``--hash=`` lines and ``# via`` comments
each. A failure here means: run ``make lock`` and commit the result.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from tf_config import REPO

LOCK = REPO / "requirements" / "functions.lock"
#: How uv names the project itself in a "# via" comment.
PROJECT_VIA = re.compile(r"^\S+ \(pyproject\.toml\)$")
#: The functions' runtime (Cloud Run python312 on Linux x86_64), for dependency markers.
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}


@dataclass
class Pin:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock() -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in LOCK.read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line:
            continue
        if raw[:1].isalnum():  # a new entry: name==version [\]
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
            assert match, f"lock line without an == pin: {raw!r}"
            current = Pin(canonicalize_name(match.group(1)), match.group(3))
            assert current.name not in pins, f"{current.name} is locked twice"
            pins[current.name] = current
            current.hashes += re.findall(r"--hash=(\S+)", line)
        elif line.startswith("--hash="):
            assert current, raw
            current.hashes.append(line.removeprefix("--hash="))
        elif line.startswith("#"):
            if current and raw.startswith("    #"):
                via = line.lstrip("#").strip().removeprefix("via").strip()
                if via:
                    current.via.append(via)
        else:
            pytest.fail(f"unexpected lock line {raw!r}")
    return pins


def runtime_dependencies() -> list[Requirement]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return [Requirement(dep) for dep in tomllib.load(f)["project"]["dependencies"]]


def test_lock_says_how_to_regenerate_it() -> None:
    """Given the lock, then its header names the make target that rewrites it."""
    lines = LOCK.read_text().splitlines()
    header = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert any("make lock" in line for line in header), header


def test_every_entry_is_pinned_with_hashes() -> None:
    """Given the lock, then every entry has an exact version and at least one sha256 hash
    (pip's hash-checking mode needs both for every requirement)."""
    pins = read_lock()
    assert len(pins) >= len(runtime_dependencies())
    for pin in pins.values():
        Version(pin.version)  # a real version, not a range
        assert pin.hashes, f"{pin.name} has no --hash"
        for digest in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), (pin.name, digest)


def test_each_runtime_dependency_is_locked_within_its_range() -> None:
    """Given pyproject's [project].dependencies, then each (that applies on python312 Linux)
    is pinned in the lock at a version its range allows, and is marked as a direct
    dependency of the project."""
    pins = read_lock()
    for requirement in runtime_dependencies():
        if requirement.marker and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make lock`"
        pin = pins[name]
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{LOCK.name} pins {name}=={pin.version}, outside {requirement}: run `make lock`")
        assert any(PROJECT_VIA.match(via) for via in pin.via), (
            f"{name} is not a direct dependency in {LOCK.name}: run `make lock`")


def test_lock_has_no_leftover_entries() -> None:
    """Given the lock, then its direct dependencies are exactly pyproject's, and every other
    entry is wanted by a locked package (nothing left over from a removed dependency)."""
    pins = read_lock()
    direct = {name for name, pin in pins.items() if any(PROJECT_VIA.match(v) for v in pin.via)}
    assert direct == {canonicalize_name(r.name) for r in runtime_dependencies()}, (
        "the lock's direct dependencies differ from pyproject's: run `make lock`")
    for pin in pins.values():
        assert pin.via, f"{pin.name} has no '# via' annotation"
        wanted_by = {canonicalize_name(v) for v in pin.via if not PROJECT_VIA.match(v)}
        assert pin.name in direct or wanted_by & pins.keys(), (
            f"{pin.name} is wanted only by {sorted(wanted_by)}, none of them locked: run `make lock`")
