"""A regular (non-editable) install carries the packages and the Hydra configs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_wheel_install_finds_configs_and_spaces(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    assert (target / "conf" / "search.yaml").is_file()
    assert (target / "conf" / "search_space" / "darts_cells.yaml").is_file()
    code = ("import nas.spaces, nas.search, nas.retrain, strategies.darts, estimators.complexity;"
            "print(nas.spaces.CONF_DIR); print(nas.spaces.space_names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout
    conf_dir, names = out.splitlines()
    assert conf_dir.startswith(str(target)) and "darts_cells" in names
    help_out = subprocess.run([sys.executable, "-m", "nas.search", "--cfg", "job"], capture_output=True,
                              text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert help_out.returncode == 0, help_out.stderr[-2000:]
    assert "search_space:" in help_out.stdout and "darts_cells" in help_out.stdout
