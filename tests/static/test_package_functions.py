"""scripts/package_functions.py: complete, deterministic function source trees."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from tf_config import REPO

SCRIPT = REPO / "scripts" / "package_functions.py"


def package(root: Path, out: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "--out", str(out), *names],
        capture_output=True, text=True, timeout=120, check=False,
    )


def hashes(char: str) -> str:
    return f"--hash=sha256:{char * 64}"


#: A lock as ``make lock`` writes it: header, entries one hash a line, "# via" comments.
LOCK = f"""# header
functions-framework==3.8.2 \\
    {hashes("a")} \\
    {hashes("b")}
    # via x (pyproject.toml)
httpx==0.27.0 \\
    {hashes("c")}
    # via
    #   x (pyproject.toml)
"""


def requirement_entries(text: str) -> list[str]:
    """Each requirement of a requirements file on one line, comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file())


def manifest(tree: Path) -> list[tuple[str, int, int, str]]:
    """(path, mode, mtime_ns, sha256) of every file and folder, in order."""
    rows = []
    for path in sorted(tree.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        rows.append((path.relative_to(tree).as_posix(), stat.S_IMODE(st.st_mode),
                     st.st_mtime_ns, digest))
    return rows


def archive_hash(tree: Path) -> str:
    """SHA-256 of a zip of ``tree`` that records each file's own mtime and mode."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files(tree):
            st = path.stat()
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(),
                                   date_time=_zip_time(st.st_mtime))
            info.external_attr = stat.S_IMODE(st.st_mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    import time

    t = time.gmtime(max(mtime, 315532800))
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small repository: two functions (one with extra requirements), the lock and a
    library."""
    root = tmp_path / "repo"
    (root / "functions" / "alpha").mkdir(parents=True)
    (root / "functions" / "beta").mkdir(parents=True)
    (root / "shared" / "kiln" / "providers" / "__pycache__").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "0"\n'
        'dependencies = ["functions-framework>=3.8,<4", "httpx>=0.27"]\n')
    (root / "requirements").mkdir()
    (root / "requirements" / "functions.lock").write_text(LOCK)
    (root / "functions" / "alpha" / "main.py").write_text("def alpha(request):\n    return 'a'\n")
    (root / "functions" / "alpha" / "requirements.txt").write_text(
        f"# extra\nhttpx==0.27.0 {hashes('c')}\nrich==13.7.1 \\\n    {hashes('d')}\n")
    (root / "functions" / "beta" / "main.py").write_text("def beta(event):\n    pass\n")
    kiln = root / "shared" / "kiln"
    (kiln / "__init__.py").write_text('"""kiln"""\n')
    (kiln / "settings.py").write_text("JOBS_TOPIC = 'kiln-jobs'\n")
    (kiln / "providers" / "base.py").write_text("class Provider: ...\n")
    (kiln / "providers" / "__pycache__" / "base.cpython-312.pyc").write_bytes(b"\0junk")
    (kiln / "stale.pyc").write_bytes(b"\0junk")
    for path in root.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o600)  # odd permissions must not leak into the output
    return root


def test_builds_each_function_tree(repo: Path, tmp_path: Path) -> None:
    """Given two functions and the library, when packaging, then each tree has its main.py,
    the locked requirements (pins and hashes) plus its own new extras, and the library
    without caches."""
    out = tmp_path / "out"
    result = package(repo, out)
    assert result.returncode == 0, result.stderr
    alpha = out / "alpha"
    assert (alpha / "main.py").read_text() == (repo / "functions/alpha/main.py").read_text()
    requirements = requirement_entries((alpha / "requirements.txt").read_text())
    assert requirements == [
        f"functions-framework==3.8.2 {hashes('a')} {hashes('b')}",
        f"httpx==0.27.0 {hashes('c')}",
        f"rich==13.7.1 {hashes('d')}",
    ]
    assert requirement_entries((out / "beta" / "requirements.txt").read_text()) == requirements[:2]
    shipped = {p.relative_to(out / "beta").as_posix() for p in files(out / "beta")}
    assert shipped == {"main.py", "requirements.txt", "kiln/__init__.py", "kiln/settings.py",
                       "kiln/providers/base.py"}


def test_two_runs_are_identical(repo: Path, tmp_path: Path) -> None:
    """Given the same sources, when packaging twice into different folders, then names,
    contents, modes and mtimes match, so the archives hash the same."""
    first, second = tmp_path / "one", tmp_path / "two"
    assert package(repo, first).returncode == 0
    assert package(repo, second).returncode == 0
    assert manifest(first) == manifest(second)
    for name in ("alpha", "beta"):
        assert archive_hash(first / name) == archive_hash(second / name)
    modes = {row[1] for row in manifest(first)}
    assert modes == {0o644, 0o755}


def test_source_change_changes_the_archive(repo: Path, tmp_path: Path) -> None:
    """Given a packaged function, when a library file changes, then its archive hash changes
    (a redeploy), and changing it back restores the old hash (no redeploy)."""
    out = tmp_path / "out"
    assert package(repo, out, "beta").returncode == 0
    before = archive_hash(out / "beta")
    settings = repo / "shared" / "kiln" / "settings.py"
    original = settings.read_text()
    settings.write_text(original + "MAX = 3\n")
    assert package(repo, out, "beta").returncode == 0
    assert archive_hash(out / "beta") != before
    settings.write_text(original)
    assert package(repo, out, "beta").returncode == 0
    assert archive_hash(out / "beta") == before


def test_rebuild_drops_deleted_files(repo: Path, tmp_path: Path) -> None:
    """Given a packaged function, when a library module is deleted and it is packaged again,
    then the module is gone from the tree."""
    out = tmp_path / "out"
    assert package(repo, out, "alpha").returncode == 0
    (repo / "shared" / "kiln" / "providers" / "base.py").unlink()
    assert package(repo, out, "alpha").returncode == 0
    assert not (out / "alpha" / "kiln" / "providers" / "base.py").exists()


def test_missing_main_fails_clearly(repo: Path, tmp_path: Path) -> None:
    """Given a function folder without main.py, when packaging, then it exits non-zero and
    names the missing file."""
    (repo / "functions" / "beta" / "main.py").unlink()
    result = package(repo, tmp_path / "out")
    assert result.returncode == 1
    assert "functions/beta/main.py is missing" in result.stderr


@pytest.mark.parametrize(("extra", "message"), [
    ("rich\n", "'rich' is not pinned (==) with --hash= values"),
    ("rich==13.7.1\n", "'rich==13.7.1' is not pinned (==) with --hash= values"),
    ("rich>=13 --hash=sha256:" + "d" * 64 + "\n", "'rich>=13' is not pinned"),
    (f"httpx==0.28.0 {hashes('e')}\n", "httpx==0.28.0 but requirements/functions.lock pins 0.27.0"),
])
def test_extra_requirement_must_be_pinned_with_hashes(
        repo: Path, tmp_path: Path, extra: str, message: str) -> None:
    """Given a function's extra requirement without a pin or a hash (pip's hash-checking
    mode would reject the file), or pinning a locked project at another version, when
    packaging, then it exits non-zero and says which line."""
    (repo / "functions" / "alpha" / "requirements.txt").write_text(extra)
    result = package(repo, tmp_path / "out", "alpha")
    assert result.returncode == 1
    assert "functions/alpha/requirements.txt" in result.stderr
    assert message in result.stderr


def test_missing_lock_fails_clearly(repo: Path, tmp_path: Path) -> None:
    """Given no requirements/functions.lock, when packaging, then it exits non-zero and says
    to run make lock."""
    (repo / "requirements" / "functions.lock").unlink()
    result = package(repo, tmp_path / "out")
    assert result.returncode == 1
    assert "requirements/functions.lock is missing (run `make lock`)" in result.stderr


def test_stale_lock_fails_clearly(repo: Path, tmp_path: Path) -> None:
    """Given a runtime dependency added to pyproject but not locked, when packaging, then it
    exits non-zero and names the dependency."""
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"httpx>=0.27"', '"httpx>=0.27", "Pydantic>=2"'))
    result = package(repo, tmp_path / "out")
    assert result.returncode == 1
    assert "'Pydantic>=2' is not in requirements/functions.lock (run `make lock`)" in result.stderr


def test_unhashed_lock_entry_fails(repo: Path, tmp_path: Path) -> None:
    """Given a lock entry without hashes, when packaging, then it exits non-zero."""
    lock = repo / "requirements" / "functions.lock"
    lock.write_text(lock.read_text() + "idna==3.7\n")
    result = package(repo, tmp_path / "out")
    assert result.returncode == 1
    assert "requirements/functions.lock: 'idna==3.7' is not pinned" in result.stderr


@pytest.mark.parametrize(("path", "source", "message"), [
    ("shared/kiln/settings.py", "def f():\n    import kiln_dev.local as local\n",
     "settings.py: imports kiln_dev.local"),
    ("shared/kiln/providers/base.py", "from kiln_dev.standins import fcm\n",
     "providers/base.py: imports kiln_dev.standins"),
    ("shared/kiln/providers/base.py", "import importlib\nm = importlib.import_module('kiln_dev')\n",
     "providers/base.py: imports kiln_dev"),
    ("shared/kiln/kiln_dev/__init__.py", "", "kiln_dev/__init__.py: inside a kiln_dev folder"),
    ("functions/beta/main.py", "import os, kiln_dev\n", "main.py: imports kiln_dev"),
])
def test_refuses_the_development_package(
        repo: Path, tmp_path: Path, path: str, source: str, message: str) -> None:
    """Given a library module or a function's main.py that imports kiln_dev (at the top or
    inside a function), or a kiln_dev folder in the library, when packaging, then it exits
    non-zero, names the file and writes no tree."""
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    out = tmp_path / "out"
    result = package(repo, out, "beta")
    assert result.returncode == 1
    assert "development package kiln_dev" in result.stderr
    assert message in result.stderr
    assert not (out / "beta").exists()


def test_dev_package_lookalikes_are_packaged(repo: Path, tmp_path: Path) -> None:
    """Given names that only look like the development package (kiln_devices, a relative
    .kiln_dev module of kiln itself, a string), when packaging, then it succeeds."""
    (repo / "shared" / "kiln" / "settings.py").write_text(
        "import json\nfrom . import kiln_dev\nNAME = 'kiln_dev'\n"
        "def f():\n    import kiln_devices\n")
    result = package(repo, tmp_path / "out", "beta")
    assert result.returncode == 0, result.stderr


def test_packages_this_repository(tmp_path: Path) -> None:
    """Given this repository, when packaging every function, then each tree has main.py,
    requirements.txt with exactly the lock's requirements (each ``==``-pinned with hashes,
    pyproject's runtime dependencies among them), and the kiln package."""
    out = tmp_path / "functions"
    result = package(REPO, out)
    assert result.returncode == 0, result.stderr
    with (REPO / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    locked = requirement_entries((REPO / "requirements" / "functions.lock").read_text())
    assert locked
    names = sorted(p.name for p in (REPO / "functions").iterdir()
                   if p.is_dir() and not p.name.startswith((".", "_", "__")))
    assert {"ingress", "worker", "sweeper"} <= set(names)
    for name in names:
        tree = out / name
        assert (tree / "main.py").is_file(), name
        lines = requirement_entries((tree / "requirements.txt").read_text())
        assert lines[:len(locked)] == locked
        for line in lines:
            assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._\[\]-]*==[^\s;]+", line), line
            assert re.search(r" --hash=sha256:[0-9a-f]{64}(\s|$)", line), line
        pinned = {re.sub(r"[-_.]+", "-", line.split("==", 1)[0]).lower() for line in lines}
        for dependency in dependencies:
            name = re.match(r"[A-Za-z0-9._-]+", dependency)
            assert name and re.sub(r"[-_.]+", "-", name.group()).lower() in pinned, dependency
        assert any(line.startswith("functions-framework==") for line in lines)
        assert (tree / "kiln" / "settings.py").is_file() or (tree / "kiln" / "__init__.py").is_file()
        assert not list(tree.rglob("__pycache__"))
