"""One import name: the wheel installs `splitwatch` and nothing else, and works outside the checkout.

The folders the design fixes (service/, stats/, drift/) install as splitwatch.service, splitwatch.stats
and splitwatch.drift. From the checkout's root, `import stats` would find the folder itself, so these
checks build the wheel from a copy of the tree and run Python in a fresh venv from another directory.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"service": "splitwatch/service", "stats": "splitwatch/stats", "drift": "splitwatch/drift"}


def _sources() -> list[Path]:
    """Return every Python module of the package's folders, relative to the checkout."""
    return sorted(p.relative_to(ROOT) for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the tree (no build/ or egg-info left in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for d in PACKAGE_DIRS:
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "--wheel-dir", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (out / "build.log").write_text(res.stdout + res.stderr)
    (whl,) = out.glob("splitwatch-*.whl")
    return whl


def test_the_build_warns_of_nothing(wheel: Path) -> None:
    # a warning on every install alarms a new user (issue 25: the datasets folder was left out of packages)
    log = (wheel.parent / "build.log").read_text()
    assert "Warning" not in log, log


def test_the_wheel_installs_one_top_level_name_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"splitwatch"}
    # no module of the tree is left out (a new subpackage must be listed in pyproject.toml)
    expected = {f"{PACKAGE_DIRS[p.parts[0]]}/{'/'.join(p.parts[1:])}" for p in _sources()}
    assert expected <= set(names), sorted(expected - set(names))
    assert "splitwatch/service/evaluation/datasets/support_intents.jsonl" in names  # the shipped eval test set
    assert "splitwatch/__init__.py" not in names  # a namespace package: nothing else claims the name
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_a_fresh_venv_with_only_splitwatch_imports_splitwatch_names_only(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # The dependencies come from the test environment's site-packages on PYTHONPATH: a directory on
    # PYTHONPATH does not run .pth files, so the checkout's editable install is not active there.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    probe = """
import importlib, pkgutil, sys
for bare in ("stats", "service", "drift"):
    try:
        importlib.import_module(bare)
    except ModuleNotFoundError:
        pass
    else:
        sys.exit(f"import {bare} worked")
import splitwatch.stats, splitwatch.service, splitwatch.drift
assert splitwatch.stats.__file__.startswith(sys.prefix), splitwatch.stats.__file__
modules = [m.name for pkg in (splitwatch.service, splitwatch.stats, splitwatch.drift)
           for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in modules:
    importlib.import_module(name)  # every module imports from the installed wheel alone
print(len(modules), splitwatch.stats.analyze.__module__)
"""
    res = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    count, module = res.stdout.split()
    assert int(count) == len(_sources()) - len(PACKAGE_DIRS)  # every module and subpackage, not the 3 roots
    assert module == "splitwatch.stats.engine"
    res = subprocess.run([str(env_dir / "bin" / "splitwatch"), "--version"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "splitwatch 0.1.0", res.stdout + res.stderr


def test_the_package_never_imports_its_folders_by_their_bare_names() -> None:
    # ruff's banned-api rule covers tests and bench; inside the package it reads relative imports as
    # folder names, so the package's own absolute imports are checked here.
    offenders = []
    for rel in _sources():
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGE_DIRS]
    assert offenders == []


# Which stage may import which (docs/architecture.md): the flow's direction, not the other way round.
ALLOWED_STAGES = {
    "proxy": {"delivery", "control"},
    "delivery": set(),
    "control": {"delivery"},
    "analyzer": {"delivery", "control", "serving"},  # the report's Serving section
    "serving": set(),  # the model servers' metrics per arm, from Prometheus' API (docs/serving.md)
    "drift": {"delivery"},
    "evaluation": {"proxy", "analyzer"},  # the proxy's upstream clients, the report's number formats
    "training": {"analyzer"},  # the report's number formats and page style
    "data_checks": {"analyzer", "evaluation"},  # the same, and the eval's text normalisation
    "trackers": set(),  # fed plain report JSON
    "local": {"proxy", "delivery", "analyzer", "control", "drift", "evaluation", "training"},  # the demo runs them all
}
# The CLI starts every process and the package re-exports its public names: they may import any stage.
# Every other shared module is a contract and imports no stage.
ENTRY_POINTS = {"splitwatch.service.cli", "splitwatch.service.cli_evidence", "splitwatch.service"}
# (the feature extractors in service/features/ are contracts too: see the test below)


def _stage_of(module: str) -> str | None:
    """Return the stage a splitwatch module belongs to (None for the shared contracts and stats)."""
    parts = module.split(".")
    if parts[:2] == ["splitwatch", "drift"]:
        return "drift"
    if parts[:2] == ["splitwatch", "service"] and len(parts) > 2 and parts[2] in ALLOWED_STAGES:
        return parts[2]
    return None


def _resolve(rel: Path, node: ast.ImportFrom) -> str:
    """Return the absolute module name an ImportFrom in file ``rel`` refers to."""
    own = [PACKAGE_DIRS[rel.parts[0]].replace("/", "."), *rel.parts[1:-1]]
    if node.level == 0:
        return node.module or ""
    base = own[: len(own) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_stages_import_only_upstream_stages_and_the_contracts() -> None:
    wrong = []
    for rel in _sources():
        own = PACKAGE_DIRS[rel.parts[0]].replace("/", ".") + "." + ".".join(rel.with_suffix("").parts[1:])
        if own.removesuffix(".__init__") in ENTRY_POINTS:
            continue
        mine = _stage_of(own)
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(rel, node)
            targets = [target] + [f"{target}.{a.name}" for a in node.names]  # `from .. import metrics`
            for t in targets:
                theirs = _stage_of(t)
                if theirs and theirs != mine and theirs not in ALLOWED_STAGES.get(mine or "", set()):
                    wrong.append(f"{rel}:{node.lineno} ({mine or 'contract'}) imports {t} ({theirs})")
    assert sorted(set(wrong)) == []


# What drift/ imports from the service (docs/architecture.md, "What drift/ really depends on"): a
# top-level folder, but not independent of the service.
DRIFT_DEPENDS_ON = {"splitwatch.service.config", "splitwatch.service.events", "splitwatch.service.metrics",
                    "splitwatch.service.status_server", "splitwatch.service.delivery.kafka_client",
                    "splitwatch.service.delivery.kafka_sink", "splitwatch.service.features.prompt",
                    "splitwatch.service.features.topic_sketch"}


def test_drift_depends_on_the_service_modules_the_architecture_names() -> None:
    used = set()
    for rel in _sources():
        if rel.parts[0] != "drift":
            continue
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(rel, node).startswith("splitwatch.service"):
                target = _resolve(rel, node)
                used |= {f"{target}.{a.name}" if target == "splitwatch.service" else target for a in node.names}
    assert used == DRIFT_DEPENDS_ON
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert all(f"`{m.removeprefix('splitwatch.')}`" in doc for m in DRIFT_DEPENDS_ON)


def test_the_feature_extractors_import_no_stage() -> None:
    wrong = []
    for rel in _sources():
        if rel.parts[:2] != ("service", "features"):
            continue
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and _stage_of(_resolve(rel, node)):
                wrong.append(f"{rel}:{node.lineno} imports {_resolve(rel, node)}")
    assert wrong == []


def test_make_test_names_a_missing_prerequisite_in_one_line(tmp_path: Path) -> None:
    """Without promtool, prometheus, chromium or java, `make test` stops first with what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "sort", "tr", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    res = subprocess.run([str(bin_dir / "bash"), str(ROOT / ".ci" / "prerequisites")], capture_output=True,
                         text=True, env={**os.environ, "PATH": str(bin_dir), "SPLITWATCH_NO_INSTALL": "1"})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "make test needs promtool prometheus chromium java: on Debian or Ubuntu run "
        "'sudo apt-get install chromium openjdk-17-jre-headless prometheus'"]
