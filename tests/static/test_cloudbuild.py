"""Static checks of cloudbuild.yaml against the repository: make targets, paths, substitutions."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml
from tf_config import REPO

#: Substitutions Cloud Build provides itself.
BUILTINS = frozenset({
    "PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "COMMIT_SHA", "SHORT_SHA",
    "REVISION_ID", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REF_NAME",
    "TRIGGER_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT", "SERVICE_ACCOUNT_EMAIL",
})

#: Paths that a previous step or a tool creates (never in the repository).
GENERATED = ("build/", ".venv/", ".terraform/")

SUBSTITUTION = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    config = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    assert config.get("steps"), "cloudbuild.yaml has no steps"
    return config


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_./$() -]+?)\s*::?(?!=)", line)
        if match and not line.startswith(("\t", "#")):
            targets.update(match.group(1).split())
    return targets


def make_calls(step: dict[str, Any]) -> list[str]:
    """Make targets a step runs, via ``entrypoint: make`` or ``make X`` in a shell script."""
    args = [str(a) for a in step.get("args", [])]
    if step.get("entrypoint") == "make" or step.get("name") == "make":
        return [a for a in args if not a.startswith("-") and "=" not in a]
    script = " ".join(args)
    return [t for m in re.finditer(r"\bmake((?:\s+[\w.-]+)+)", script)
            for t in m.group(1).split() if not t.startswith("-") and "=" not in t]


def all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return [str(value)]


def used_substitutions(value: Any) -> set[str]:
    names = set()
    for text in all_strings(value):
        for match in SUBSTITUTION.finditer(text.replace("$$", "")):
            names.add(match.group(1) or match.group(2))
    return names


def test_make_targets_exist(build: dict[str, Any]) -> None:
    """Given every step, when collecting the make targets it runs, then each is a target of
    the Makefile."""
    targets = makefile_targets()
    called = [t for step in build["steps"] for t in make_calls(step)]
    assert called, "no step runs make"
    missing = sorted(set(called) - targets)
    assert not missing, f"cloudbuild.yaml runs make targets the Makefile lacks: {missing}"


def test_pipeline_runs_install_lint_test_package_then_terraform(build: dict[str, Any]) -> None:
    """Given the steps, when reading their order, then setup, lint, test and package run
    before terraform init, plan and apply (archive_file reads build/ at plan time)."""
    calls = [t for step in build["steps"] for t in make_calls(step)]
    assert [c for c in calls if c in ("setup", "lint", "test", "package")] == [
        "setup", "lint", "test", "package"]
    order = []
    for step in build["steps"]:
        if "terraform" in step["name"]:
            order.append(str(step["args"][0]))
        elif "package" in make_calls(step):
            order.append("package")
    assert order == ["package", "init", "validate", "plan", "apply"]
    apply = next(s for s in build["steps"] if "terraform" in s["name"] and s["args"][0] == "apply")
    plan = next(s for s in build["steps"] if "terraform" in s["name"] and s["args"][0] == "plan")
    assert any(str(a).startswith("-out=") and str(a)[5:] in apply["args"] for a in plan["args"])


def test_the_test_step_skips_the_offline_tfcheck_a_build_cannot_run(build: dict[str, Any]) -> None:
    """``make test`` runs tfcheck, which needs the shared tools folder beside the repository
    (CI's machines have it; a Cloud Build workspace does not): the build's test step sets
    SKIP_TFCHECK, and the real ``terraform validate`` checks infra/ instead."""
    test = next(s for s in build["steps"] if "test" in make_calls(s))
    assert "SKIP_TFCHECK=1" in test.get("env", [])
    assert any("terraform" in s["name"] and s["args"][0] == "validate" for s in build["steps"])
    make = subprocess.run(["make", "-s", "tfcheck", "SKIP_TFCHECK=1", "TFCHECK=/missing.py"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert make.returncode == 0 and "skipped" in make.stdout
    make = subprocess.run(["make", "-s", "tfcheck", "TFCHECK=/missing.py"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert make.returncode != 0 and "missing" in make.stderr


def test_terraform_image_is_at_least_1_6(build: dict[str, Any]) -> None:
    """Given the terraform steps, when reading their image tag, then it is pinned to >= 1.6."""
    images = {s["name"] for s in build["steps"] if "terraform" in s["name"]}
    assert images
    for image in images:
        match = re.search(r":(\d+)\.(\d+)", image)
        assert match, f"{image} is not pinned to a version"
        assert (int(match.group(1)), int(match.group(2))) >= (1, 6)


def test_referenced_paths_exist(build: dict[str, Any]) -> None:
    """Given every step, when resolving its dir and path-like arguments, then each exists in
    the repository (generated build outputs aside)."""
    checked = []
    for step in build["steps"]:
        base = REPO / step.get("dir", "")
        if "dir" in step:
            assert base.is_dir(), f"step {step.get('id')}: dir {step['dir']!r} does not exist"
        for arg in (str(a) for a in step.get("args", [])):
            candidate = arg.rsplit("=", 1)[-1]
            if ("/" not in candidate or "$" in candidate or "://" in candidate
                    or candidate.startswith(GENERATED) or " " in candidate):
                continue
            checked.append(candidate)
            assert (REPO / candidate).exists() or (base / candidate).exists(), (
                f"step {step.get('id')}: {candidate!r} does not exist")
    assert checked, "no repository path was checked"


def test_substitutions_are_declared_and_used(build: dict[str, Any]) -> None:
    """Given the config, when collecting $VARS, then each is a built-in or declared, and
    each declared one is used by a step."""
    declared = set(build.get("substitutions", {}))
    for name in declared:
        assert re.fullmatch(r"_[A-Z0-9_]+", name), f"user substitution {name} must be _UPPER"
    assert {"_PROJECT_ID", "_REGION", "_TF_STATE_BUCKET"} <= declared
    used = used_substitutions(build["steps"]) | used_substitutions(build.get("substitutions"))
    unknown = sorted(used - declared - BUILTINS)
    assert not unknown, f"undeclared substitutions: {unknown}"
    unused = sorted(declared - used_substitutions(build["steps"]))
    assert not unused, f"declared but unused substitutions: {unused}"
    if any("$" in v for v in map(str, build.get("substitutions", {}).values())):
        assert build.get("options", {}).get("dynamicSubstitutions") is True


def test_terraform_receives_project_and_region(build: dict[str, Any]) -> None:
    """Given the terraform plan step, when reading its arguments, then project_id and region
    come from the substitutions and init gets the state bucket."""
    steps = {str(s["args"][0]): s for s in build["steps"] if "terraform" in s["name"]}
    plan = " ".join(map(str, steps["plan"]["args"]))
    assert "-var=project_id=${_PROJECT_ID}" in plan
    assert "-var=region=${_REGION}" in plan
    assert "bucket=${_TF_STATE_BUCKET}" in " ".join(map(str, steps["init"]["args"]))
    assert all(s.get("dir") == "infra" for s in steps.values())
