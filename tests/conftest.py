"""Shared test fixtures. Real data is read where it lies (../shared/data), never copied in."""
from __future__ import annotations

from pathlib import Path

import pytest

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
