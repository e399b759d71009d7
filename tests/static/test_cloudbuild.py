"""Static checks of the two Cloud Build configs against the repository: CI (cloudbuild.yaml)
and the deploy (infra/ci/deploy.yaml): make targets, paths, substitutions, who runs what."""

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

DEPLOY = "infra/ci/deploy.yaml"

SUBSTITUTION = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def load(path: str) -> dict[str, Any]:
    config = yaml.safe_load((REPO / path).read_text())
    assert config.get("steps"), f"{path} has no steps"
    return config  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    """CI: cloudbuild.yaml, run as kiln-ci (no roles on the project)."""
    return load("cloudbuild.yaml")


@pytest.fixture(scope="module")
def deploy() -> dict[str, Any]:
    """The deploy: infra/ci/deploy.yaml, run as kiln-deployer."""
    return load(DEPLOY)


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


def test_ci_runs_install_lint_test_package_and_deploys_nothing(build: dict[str, Any]) -> None:
    """Given the CI build, when reading its steps, then setup, lint, test and package run in
    that order and no step deploys: it installs and runs third-party code (the dev
    dependencies), so it runs as an account that can change nothing."""
    calls = [t for step in build["steps"] for t in make_calls(step)]
    assert [c for c in calls if c in ("setup", "lint", "test", "package")] == [
        "setup", "lint", "test", "package"]
    text = " ".join(all_strings(build["steps"]))
    assert "terraform" not in text and "gcloud" not in text
    assert not used_substitutions(build["steps"]) - BUILTINS


def test_the_deploy_packages_then_applies_its_plan_with_no_third_party_code(
        deploy: dict[str, Any]) -> None:
    """Given the deploy build, when reading its steps, then it checks it deploys the tested
    commit, packages with the standard library's Python (no make, no pip: nothing a
    dependency ships runs as the deploy identity), then terraform init, validate, plan and
    applies exactly that plan (archive_file reads build/ at plan time)."""
    order = []
    for step in deploy["steps"]:
        text = " ".join(map(str, step.get("args", [])))
        assert "make" not in make_calls(step) and "pip" not in text.split()
        assert step.get("entrypoint") != "make"
        if "terraform" in step["name"]:
            order.append(str(step["args"][0]))
        elif "package_functions.py" in text:
            assert step.get("entrypoint") == "python3" and "-I" in step["args"]
            order.append("package")
        elif step.get("id") == "tested-commit":
            assert "${COMMIT_SHA}" in text and "${_COMMIT}" in text
            order.append("tested-commit")
    assert order == ["tested-commit", "package", "init", "validate", "plan", "apply"]
    steps = deploy["steps"]
    apply = next(s for s in steps if "terraform" in s["name"] and s["args"][0] == "apply")
    plan = next(s for s in steps if "terraform" in s["name"] and s["args"][0] == "plan")
    assert any(str(a).startswith("-out=") and str(a)[5:] in apply["args"] for a in plan["args"])


def test_the_packager_uses_the_standard_library_only() -> None:
    """scripts/package_functions.py runs in the deploy on a bare Python image: it may import
    nothing outside the standard library."""
    import ast
    import sys

    tree = ast.parse((REPO / "scripts" / "package_functions.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_the_test_step_skips_the_offline_tfcheck_a_build_cannot_run(
        build: dict[str, Any], deploy: dict[str, Any]) -> None:
    """``make test`` runs tfcheck, which needs the shared tools folder beside the repository
    (CI's machines have it; a Cloud Build workspace does not): the build's test step sets
    SKIP_TFCHECK, and the deploy's real ``terraform validate`` checks infra/ instead."""
    test = next(s for s in build["steps"] if "test" in make_calls(s))
    assert "SKIP_TFCHECK=1" in test.get("env", [])
    assert any("terraform" in s["name"] and s["args"][0] == "validate" for s in deploy["steps"])
    make = subprocess.run(["make", "-s", "tfcheck", "SKIP_TFCHECK=1", "TFCHECK=/missing.py"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert make.returncode == 0 and "skipped" in make.stdout
    make = subprocess.run(["make", "-s", "tfcheck", "TFCHECK=/missing.py"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert make.returncode != 0 and "missing" in make.stderr


def test_terraform_image_is_at_least_1_6(deploy: dict[str, Any]) -> None:
    """Given the terraform steps, when reading their image tag, then it is pinned to >= 1.6."""
    images = {s["name"] for s in deploy["steps"] if "terraform" in s["name"]}
    assert images
    for image in images:
        match = re.search(r":(\d+)\.(\d+)", image)
        assert match, f"{image} is not pinned to a version"
        assert (int(match.group(1)), int(match.group(2))) >= (1, 6)


@pytest.mark.parametrize("path", ["cloudbuild.yaml", DEPLOY])
def test_referenced_paths_exist(path: str) -> None:
    """Given every step, when resolving its dir and path-like arguments, then each exists in
    the repository (generated build outputs aside)."""
    checked = []
    for step in load(path)["steps"]:
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


@pytest.mark.parametrize("path", ["cloudbuild.yaml", DEPLOY])
def test_substitutions_are_declared_and_used(path: str) -> None:
    """Given a config, when collecting $VARS, then each is a built-in or declared, and each
    declared one is used by a step; the deploy declares the project, region and state."""
    config = load(path)
    declared = set(config.get("substitutions", {}))
    for name in declared:
        assert re.fullmatch(r"_[A-Z0-9_]+", name), f"user substitution {name} must be _UPPER"
    if path == DEPLOY:
        assert {"_PROJECT_ID", "_REGION", "_TF_STATE_BUCKET", "_COMMIT"} <= declared
    used = used_substitutions(config["steps"]) | used_substitutions(config.get("substitutions"))
    unknown = sorted(used - declared - BUILTINS)
    assert not unknown, f"undeclared substitutions: {unknown}"
    unused = sorted(declared - used_substitutions(config["steps"]))
    assert not unused, f"declared but unused substitutions: {unused}"
    if any("$" in v for v in map(str, config.get("substitutions", {}).values())):
        assert config.get("options", {}).get("dynamicSubstitutions") is True


def test_terraform_receives_project_and_region(deploy: dict[str, Any]) -> None:
    """Given the terraform plan step, when reading its arguments, then project_id and region
    come from the substitutions and init gets the state bucket."""
    steps = {str(s["args"][0]): s for s in deploy["steps"] if "terraform" in s["name"]}
    plan = " ".join(map(str, steps["plan"]["args"]))
    assert "-var=project_id=${_PROJECT_ID}" in plan
    assert "-var=region=${_REGION}" in plan
    assert "bucket=${_TF_STATE_BUCKET}" in " ".join(map(str, steps["init"]["args"]))
    assert all(s.get("dir") == "infra" for s in steps.values())
