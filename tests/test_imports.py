"""Module structure: no two data/metric modules import each other, and the moved names still import
from where the rest of the code reads them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# pairs that used to import each other (one side through a function-local import)
PAIRS = [("nas.data.coco", "nas.metrics.coco_eval"), ("nas.data.topdown", "nas.data.bad_images")]


def imported_modules(module: str) -> set[str]:
    """Every `nas...` module `module` imports anywhere in its file, function bodies included."""
    path = REPO_ROOT / Path(*module.split(".")).with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from pkg import mod
    return {name for name in names if name.startswith("nas.")}


def test_import_walker_sees_function_local_imports(tmp_path, monkeypatch):
    """The check below must see lazy imports: that is how the circles were hidden."""
    package = tmp_path / "nas"
    package.mkdir()
    (package / "a.py").write_text("import os\n\ndef f():\n    from nas.b import g\n    return g\n")
    monkeypatch.setattr("tests.test_imports.REPO_ROOT", tmp_path)
    assert imported_modules("nas.a") == {"nas.b", "nas.b.g"}


@pytest.mark.parametrize("first, second", PAIRS)
def test_pair_imports_in_one_direction_only(first, second):
    both = second in imported_modules(first) and first in imported_modules(second)
    assert not both, f"{first} and {second} import each other"


def test_moved_names_are_importable_where_they_are_used():
    from nas.data import bad_images, coco, topdown
    from nas.metrics import coco_eval
    assert topdown.UnreadableImageError is bad_images.UnreadableImageError  # nas/cli.py reads topdown's
    assert coco.UnreadableImageError is bad_images.UnreadableImageError
    assert coco.load_coco is coco_eval.load_coco
    assert issubclass(topdown.UnreadableImageError, OSError)
