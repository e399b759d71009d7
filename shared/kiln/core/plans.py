"""Plans: what a caller may do (jobs per day, jobs running at once, priority).

Pure data. The table comes from settings (``KILN_PLANS``) and is checked at start-up:
an unknown field, a negative limit or a plan name no channel can use is a
``ConfigError`` that names the culprit. Which plan a caller has is decided at the edge
(``kiln.runtime.admission.plan_for``); the reasons live in ``docs/architecture.md``
("Fair queues").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kiln.core.errors import ConfigError

#: The default table: ``name:field=value,...;name:...``.
DEFAULT_PLANS = "free:daily=50,running=2,priority=0;pro:daily=2000,running=8,priority=10"
_FIELDS = {"daily": "daily_jobs", "running": "running", "priority": "priority"}


@dataclass(frozen=True)
class Plan:
    """One plan: ``daily_jobs`` accepted per UTC day, ``running`` started at once,
    ``priority`` (higher starts first; waiting jobs age towards it)."""

    name: str
    daily_jobs: int
    running: int
    priority: int = 0


@functools.cache
def parse_plans(text: str) -> Mapping[str, Plan]:
    """The plan table of ``KILN_PLANS``.

    Raises:
        ConfigError: a malformed entry, an unknown field, a missing limit or a negative one.
    """
    plans: dict[str, Plan] = {}
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        name, sep, body = entry.partition(":")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ConfigError(f"KILN_PLANS: {entry!r} is not 'name:daily=N,running=N,priority=N'")
        values: dict[str, int] = {}
        for item in (i.strip() for i in body.split(",") if i.strip()):
            key, _, raw = item.partition("=")
            if key.strip() not in _FIELDS:
                raise ConfigError(f"KILN_PLANS: plan {name!r} has an unknown field {key.strip()!r} "
                                  f"(known: {', '.join(_FIELDS)})")
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigError(f"KILN_PLANS: plan {name!r}: {key.strip()} must be a whole "
                                  f"number, got {raw.strip()!r}") from exc
            if value < 0:
                raise ConfigError(f"KILN_PLANS: plan {name!r}: {key.strip()} must not be "
                                  f"negative, got {value}")
            values[_FIELDS[key.strip()]] = value
        for required in ("daily", "running"):
            if _FIELDS[required] not in values:
                raise ConfigError(f"KILN_PLANS: plan {name!r} needs {required}=N")
        if values["running"] < 1:
            raise ConfigError(f"KILN_PLANS: plan {name!r}: running must be at least 1")
        plans[name] = Plan(name=name, **values)
    if not plans:
        raise ConfigError("KILN_PLANS defines no plan")
    return MappingProxyType(plans)


def check_plan_name(plans: Mapping[str, Plan], name: str, var: str) -> None:
    """Refuse at start-up a setting that names a plan the table lacks."""
    if name not in plans:
        raise ConfigError(f"{var} names the unknown plan {name!r} (plans: {', '.join(plans)})")


@functools.cache
def parse_capacity(text: str, default: int) -> Mapping[str, int]:
    """``KILN_PROVIDER_CAPACITY``: ``K`` for every provider, or ``name=K,...`` (``*=K`` the
    rest). Raises ConfigError on a malformed or non-positive value."""
    out: dict[str, int] = {"*": default}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, sep, raw = item.rpartition("=")
        try:
            value = int(raw)
        except ValueError as exc:
            raise ConfigError(f"KILN_PROVIDER_CAPACITY: {item!r} is not 'provider=K'") from exc
        if value < 1:
            raise ConfigError(f"KILN_PROVIDER_CAPACITY: {item!r} must be at least 1")
        out[name.strip() if sep else "*"] = value
    return MappingProxyType(out)
