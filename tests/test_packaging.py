"""What the README and docs/design.md tell a user must work after `pip install .`, from any directory.

The fast tests read pyproject.toml the way setuptools does (packages found by the `include` patterns,
PEP 420 style, package data as globs under each package) and check the documents against it: every
`python -m X` they show is a module of an installed package, every repository file they name exists,
and nothing points outside the repository. The slow test does a real (non-editable) install.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "design.md"]
EXTERNAL_MODULES = {"pip", "pytest", "venv"}  # third-party tools the README runs with -m
MODULE_RE = re.compile(r"python3? -m ([A-Za-z_][\w.]*\w)")
REPO_FILE_RE = re.compile(r"(?<![\w/.])((?:nas|search_spaces|strategies|estimators|conf|genotypes|tests|docs|"
                          r"\.ci)/[\w./-]*\.(?:py|yaml|json|md))")


def _setuptools_config() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def installed_packages() -> set[str]:
    """Dotted names setuptools' `packages.find` selects: every directory below the root whose dotted
    path matches an `include` pattern (pyproject's default is namespaces=true, so no __init__ needed)."""
    find = _setuptools_config()["packages"]["find"]
    assert find.get("where", ["."]) == ["."], "this check assumes packages are found from the root"
    patterns, excluded = find["include"], find.get("exclude", [])
    names = set()
    for folder, subdirs, _ in os.walk(REPO_ROOT):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and "." not in d]  # .venv, .git, x.egg-info
        name = ".".join(Path(folder).relative_to(REPO_ROOT).parts)
        if name and any(fnmatch.fnmatchcase(name, p) for p in patterns) and not any(
                fnmatch.fnmatchcase(name, p) for p in excluded):
            names.add(name)
    return names


def _doc_modules() -> list[tuple[str, str]]:
    return sorted({(doc.name, m) for doc in DOCS if doc.is_file() for m in MODULE_RE.findall(doc.read_text())})


def test_readme_points_at_the_design_notes_inside_the_repository():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/design.md" in readme and (REPO_ROOT / "docs" / "design.md").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documents_name_no_path_outside_the_repository(doc):
    outside = re.compile(r"(?<!\.)\.\./|/work/|shared/DESIGN")  # "runs/.../x" is an ellipsis, not a parent
    lines = [n for n, line in enumerate(doc.read_text().splitlines(), 1) if outside.search(line)]
    assert not lines, f"{doc.name} names a path outside the repository on line(s) {lines}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_file_a_document_names_exists(doc):
    missing = sorted({p for p in REPO_FILE_RE.findall(doc.read_text()) if not (REPO_ROOT / p).exists()})
    assert not missing, f"{doc.name} names files the repository does not have: {missing}"


def test_the_documents_show_module_commands():
    assert {"nas.search", "nas.retrain", "nas.tools.plot_genotype"} <= {m for _, m in _doc_modules()}


@pytest.mark.parametrize("doc,module", _doc_modules())
def test_every_module_command_is_a_module_of_an_installed_package(doc, module):
    if module in EXTERNAL_MODULES:
        return
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{doc}: python -m {module}: no such module"
    is_package = spec.submodule_search_locations is not None
    owner = module if is_package else module.rpartition(".")[0]
    assert owner in installed_packages(), (
        f"{doc}: python -m {module} lives in {owner or 'no package'!r}, which pyproject.toml does not install "
        f"(packages.find include: {_setuptools_config()['packages']['find']['include']})")
    if is_package:
        assert importlib.util.find_spec(module + ".__main__") is not None, f"{module} has no __main__"


def test_package_data_carries_every_config_yaml():
    packages, package_data = installed_packages(), _setuptools_config().get("package-data", {})
    assert "conf" in packages
    carried = set()
    for package, patterns in package_data.items():
        if package in packages:
            base = REPO_ROOT / package.replace(".", "/")
            carried |= {p.resolve() for pattern in patterns for p in base.glob(pattern)}
    shipped = {p.resolve() for p in (REPO_ROOT / "conf").rglob("*.yaml")}
    assert len(shipped) >= 5 and shipped <= carried, sorted(map(str, shipped - carried))


@pytest.mark.slow
def test_wheel_install_finds_configs_and_spaces(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    assert (target / "conf" / "search.yaml").is_file()
    assert (target / "conf" / "search_space" / "darts_cells.yaml").is_file()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    code = ("import nas.spaces, nas.search, nas.retrain, strategies.darts, estimators.complexity;"
            "print(nas.spaces.CONF_DIR); print(nas.spaces.space_names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=env).stdout
    conf_dir, names = out.splitlines()
    assert conf_dir.startswith(str(target)) and "darts_cells" in names
    help_out = subprocess.run([sys.executable, "-m", "nas.search", "--cfg", "job"], capture_output=True,
                              text=True, cwd=tmp_path, env=env)
    assert help_out.returncode == 0, help_out.stderr[-2000:]
    assert "search_space:" in help_out.stdout and "darts_cells" in help_out.stdout
    png = tmp_path / "cells.png"  # a helper tool, run outside the checkout from the installed copy
    plot = subprocess.run([sys.executable, "-m", "nas.tools.plot_genotype", str(_genotype_copy(tmp_path)),
                           "--out", str(png)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert plot.returncode == 0 and png.stat().st_size > 1000, plot.stderr[-2000:]


def _genotype_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "genotype.json"
    copy.write_text((REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json").read_text())
    return copy
