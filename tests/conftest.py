"""Shared test fixtures. Real data is read where it lies (../shared/data), never copied in."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see nas/__init__.py

import pytest  # noqa: E402

from nas.engine.runtime import configure_threads  # noqa: E402

configure_threads()  # the same thread rule as the entry points

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def coco_mini_root() -> Path:
    """The four real COCO val2017 images with their real annotations (../shared/data/coco_mini)."""
    root = SHARED_DATA / "coco_mini"
    if not (root / "annotations" / "person_keypoints_val2017.json").is_file():
        pytest.skip(f"real COCO sample not found at {root} (it ships beside the repo in ../shared, "
                    "not inside it; a user's own clone has no such folder)")
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
