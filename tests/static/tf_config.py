"""The Terraform in infra/ as plain Python data, for the static checks.

python-hcl2 changed its output over versions (v7+ keeps the quotes of strings and block
labels and marks blocks with ``__is_block__``); :func:`normalise` reduces every version to
the same shape: labels and strings unquoted, metadata dropped, blocks as lists of dicts,
expressions as ``"${...}"`` strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

_META = re.compile(r"^__\w+__$")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def normalise(value: Any) -> Any:
    """Strip python-hcl2's version-specific decoration (see the module docstring)."""
    if isinstance(value, dict):
        return {_unquote(k): normalise(v) for k, v in value.items() if not _META.match(k)}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block ``name`` of ``body`` (``{}`` when absent)."""
    found = blocks(body, name)
    return found[0] if found else {}


def blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Every nested block ``name`` of ``body``, in order."""
    value = body.get(name)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def refs(value: Any, kind: str) -> list[str]:
    """Names referenced as ``<kind>.<name>`` anywhere in ``value`` (e.g. kind="var")."""
    return re.findall(rf"(?<![\w.]){re.escape(kind)}\.([A-Za-z0-9_-]+)", str(value))


def strings(value: Any) -> list[str]:
    """Every string leaf of a parsed value, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


@dataclass
class TfModule:
    """One Terraform module directory, parsed."""

    path: Path
    top: dict[str, list[Any]]
    texts: dict[str, str]

    def resources(self, rtype: str) -> dict[str, dict[str, Any]]:
        """``{name: body}`` of every resource of type ``rtype``."""
        return self._typed("resource", rtype)

    def data(self, dtype: str) -> dict[str, dict[str, Any]]:
        return self._typed("data", dtype)

    def all_resources(self) -> dict[tuple[str, str], dict[str, Any]]:
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in self.top.get("resource", []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    found[(rtype, name)] = body
        return found

    def named(self, kind: str) -> dict[str, dict[str, Any]]:
        """``{name: body}`` of labelled top-level blocks: module, variable, output."""
        found: dict[str, dict[str, Any]] = {}
        for entry in self.top.get(kind, []):
            found.update(entry)
        return found

    def locals(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in self.top.get("locals", []):
            merged.update(entry)
        return merged

    def _typed(self, kind: str, rtype: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for entry in self.top.get(kind, []):
            found.update(entry.get(rtype, {}))
        return found


def load_module(path: Path) -> TfModule:
    """Parse every ``*.tf`` file of one module directory."""
    top: dict[str, list[Any]] = {}
    texts: dict[str, str] = {}
    for tf_file in sorted(path.glob("*.tf")):
        text = tf_file.read_text()
        texts[tf_file.name] = text
        parsed = normalise(hcl2.loads(text))
        for key, value in parsed.items():
            top.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return TfModule(path=path, top=top, texts=texts)
