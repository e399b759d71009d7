"""Cloud Storage security rules (infra/storage.rules), checked statically.

The local Storage emulator (gcp-storage-emulator) does not evaluate Firebase rules, so these
tests parse the rules file and evaluate its (deliberately simple) conditions with a small
interpreter: the owner reads ``generations/{uid}/...``, nobody else does, and no client
writes anything. The Firebase Storage emulator (firebase-tools) would be the next step for
a live check; it is not part of the local stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from kiln.runtime.results import result_path, thumbnail_path
from kiln_dev.stack import REPO

RULES = REPO / "infra" / "storage.rules"
OPS = {"read": ("get", "list"), "write": ("create", "update", "delete")}
ALL_OPS = ("get", "list", "create", "update", "delete")
#: The only condition grammar these rules may use (anything else must be reviewed by hand).
CONDITION = re.compile(r"^(?:false|true|request\.auth\s*!=\s*null|request\.auth\.uid\s*==\s*\w+"
                       r"|!request\.auth\.uid\.matches\('[^'\\]*'\)|&&|\|\||\s)+$")


@dataclass
class Block:
    pattern: str
    allows: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)


def parse(text: str) -> tuple[str, Block]:
    """(rules_version, the ``service firebase.storage`` block as nested match blocks)."""
    text = re.sub(r"//[^\n]*", "", text)
    version = re.search(r"rules_version\s*=\s*'(\d)'\s*;", text)
    assert version, "rules_version is missing"
    body_start = re.search(r"service\s+firebase\.storage\s*{", text)
    assert body_start, "no `service firebase.storage` block"
    root = Block("")
    stack = [root]
    pos = body_start.end()
    token = re.compile(r"\s*(?:(match)\s+(\S+)\s*{|(allow)\s+([\w\s,]+?)\s*:\s*if\s+([^;]+);|(}))")
    while len(stack) > 0 and pos < len(text):
        m = token.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise AssertionError(f"cannot parse storage.rules near: {text[pos:pos + 60]!r}")
        pos = m.end()
        if m[1]:
            block = Block(m[2])
            stack[-1].children.append(block)
            stack.append(block)
        elif m[3]:
            ops = tuple(o.strip() for o in m[4].split(","))
            stack[-1].allows.append((ops, " ".join(m[5].split())))
        else:
            stack.pop()
    return version[1], root


def match(pattern: str, segments: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """Bind a match pattern to the start of ``segments``: (variables, rest) or None."""
    bound: dict[str, str] = {}
    parts = pattern.strip("/").split("/")
    for i, part in enumerate(parts):
        if part.endswith("=**}"):
            bound[part[1:-4]] = "/".join(segments[i:])
            return bound, []
        if i >= len(segments):
            return None
        if part.startswith("{") and part.endswith("}"):
            bound[part[1:-1]] = segments[i]
        elif part != segments[i]:
            return None
    return bound, segments[len(parts):]


def evaluate(condition: str, auth_uid: str | None, bound: dict[str, str]) -> bool:
    assert CONDITION.match(condition), f"unreviewed condition grammar: {condition!r}"
    # Firebase's string.matches(re) matches the whole string.
    expr = re.sub(r"!request\.auth\.uid\.matches\(('[^']*')\)",
                  r" not fullmatch(\1, auth_uid or '') ", condition)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"\bfalse\b", "False", re.sub(r"\btrue\b", "True", expr))
    expr = expr.replace("request.auth.uid", "auth_uid").replace("request.auth", "auth")
    expr = expr.replace("null", "None")
    names: dict[str, Any] = {"auth": {} if auth_uid else None, "auth_uid": auth_uid,
                             "fullmatch": lambda p, v: re.fullmatch(p, v) is not None, **bound}
    return bool(eval(expr, {"__builtins__": {}}, names))


def allowed(root: Block, op: str, path: str, auth_uid: str | None, bucket: str = "b") -> bool:
    """Whether any matching ``allow`` grants ``op`` on object ``path`` (Firebase semantics)."""
    def walk(block: Block, segments: list[str], bound: dict[str, str]) -> bool:
        for child in block.children:
            hit = match(child.pattern, segments)
            if hit is None:
                continue
            names, rest = hit
            scope = {**bound, **names}
            if not rest and any(
                    op in {o for name in ops for o in OPS.get(name, (name,))}
                    and evaluate(cond, auth_uid, scope) for ops, cond in child.allows):
                return True
            if walk(child, rest, scope):
                return True
        return False

    return walk(root, ["b", bucket, "o", *path.split("/")], {})


@pytest.fixture(scope="module")
def rules() -> Block:
    version, root = parse(RULES.read_text())
    assert version == "2", "rules_version '2' is required for recursive wildcards"
    return root


OWNER, OTHER = "alice", "bob"
RESULT = result_path(OWNER, "job123", "png")


@pytest.mark.parametrize("path", [result_path(OWNER, "job123", "png"), result_path(OWNER, "job123", "glb"),
                                  thumbnail_path(OWNER, "job123")])
def test_owner_reads_own_results(rules: Block, path: str) -> None:
    """Given alice's result paths (as kiln.adapters.storage builds them), then alice may get and list
    them; bob and a signed-out caller may not."""
    for op in ("get", "list"):
        assert allowed(rules, op, path, OWNER)
        assert not allowed(rules, op, path, OTHER)
        assert not allowed(rules, op, path, None)


@pytest.mark.parametrize("owner", ["telegram:123456", "api:partner"])
def test_an_app_user_named_like_another_channels_owner_reads_nothing(rules: Block,
                                                                     owner: str) -> None:
    """Given a chat's result (uid telegram:<chatId>), when a Firebase user whose uid is
    that same string reads it, then it is denied (issue 15, item 12)."""
    for op in ("get", "list"):
        assert not allowed(rules, op, result_path(owner, "job123", "png"), owner)


@pytest.mark.parametrize("auth", [OWNER, OTHER, None])
@pytest.mark.parametrize("op", ["create", "update", "delete"])
def test_no_client_writes(rules: Block, op: str, auth: str | None) -> None:
    """Given any caller, the owner included, when writing a result, then it is denied: only
    the worker (service account, rules bypassed) writes results."""
    assert not allowed(rules, op, RESULT, auth)
    assert not allowed(rules, op, f"generations/{OWNER}/new/result.png", auth)


@pytest.mark.parametrize("path", ["other/file.png", f"generations/{OWNER}", f"generations/{OWNER}/x",
                                  f"generations/{OWNER}/job/deeper/file.png", "file.png"])
@pytest.mark.parametrize("op", ALL_OPS)
def test_everything_else_is_closed(rules: Block, path: str, op: str) -> None:
    """Given a path outside generations/{uid}/{jobId}/{file}, then nobody may touch it."""
    assert not allowed(rules, op, path, OWNER)


def test_every_write_rule_is_false(rules: Block) -> None:
    """Given every allow statement, then none that grants a write has a condition other
    than `false` (a write rule added later must come with a real emulator test)."""
    def statements(block: Block) -> list[tuple[tuple[str, ...], str]]:
        return block.allows + [s for child in block.children for s in statements(child)]

    found = statements(rules)
    assert found, "no allow statements parsed"
    for ops, condition in found:
        if {"write", "create", "update", "delete"} & set(ops):
            assert condition == "false", (ops, condition)


def test_interpreter_can_tell_allow_from_deny() -> None:
    """Given a rule that lets anyone signed in read, then the interpreter says bob may read
    alice's result (so the owner-only tests above can fail)."""
    _version, root = parse("rules_version = '2'; service firebase.storage { match /b/{bucket}/o {"
                           " match /generations/{uid}/{jobId}/{file} { allow read: if request.auth != null; }"
                           " } }")
    assert allowed(root, "get", RESULT, OTHER)
    assert not allowed(root, "get", RESULT, None)
