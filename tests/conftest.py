"""Shared test fixtures. Real data is read where it lies (../shared/data), never copied in; every test of
it is marked `real_data` and has a twin on the project's own synthetic COCO-format set, so a clone
without ../shared still tests the whole COCO path (loading, detector boxes, OKS AP, the inspector)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see nas/__init__.py

import tempfile  # noqa: E402

import pytest  # noqa: E402

# drift-corrected latency (estimators/speed.py) keeps a speed calibration per machine: tests (and the commands
# they start) keep theirs in a file of their own, never the user's ~/.cache, and calibrate for 0.2 s, not 15
os.environ["POSENAS_SPEED_FILE"] = str(Path(tempfile.mkdtemp(prefix="posenas-speed-")) / "speed.json")
os.environ.setdefault("POSENAS_CALIBRATION_S", "0.2")

from nas.engine.runtime import configure_threads  # noqa: E402

# the same thread rule as the entry points; under pytest-xdist (the default: pyproject's addopts) each worker
# process takes one share of the cores, so that N workers do not run N x the threads the machine has
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
configure_threads(max(1, (os.cpu_count() or 2) // 2 // _WORKERS) if _WORKERS else None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# the small synthetic set every clone makes for itself: 6 val images holding 12 people, 24 detector boxes
SYNTHETIC_SPEC = dict(num_train=4, num_val=6, image_size=(160, 160), max_people=3, seed=0)


@dataclass(frozen=True)
class CocoSet:
    """A COCO-format keypoint set on disk: its root, the split to read and its person-detection file."""
    root: Path
    split: str
    bbox_file: str  # relative to root

    @property
    def ann_file(self) -> Path:
        return self.root / "annotations" / f"person_keypoints_{self.split}.json"

    @property
    def image_dir(self) -> Path:
        return self.root / self.split


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory) -> Path:
    """A small synthetic COCO-format set (nas.data.synthetic), generated once per session in a second:
    train/ and val/ images, their keypoint annotations and person-detector boxes."""
    from nas.data.synthetic import SyntheticSpec, generate
    root = tmp_path_factory.mktemp("synthetic_coco")
    generate(root, SyntheticSpec(**SYNTHETIC_SPEC), progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_coco(synthetic_coco_root) -> CocoSet:
    from nas.data.synthetic import DETECTIONS_FILE
    return CocoSet(synthetic_coco_root, "val", DETECTIONS_FILE.format(split="val"))


@pytest.fixture(scope="session", params=["synthetic", pytest.param("coco_mini", marks=pytest.mark.real_data)])
def coco_set(request) -> CocoSet:
    """Each COCO-format set a generic test runs on: the synthetic one always, coco_mini where it exists."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_coco")
    from nas.data.coco import DEFAULT_BBOX_FILE
    return CocoSet(request.getfixturevalue("coco_mini_root"), "val2017", DEFAULT_BBOX_FILE)


@pytest.fixture(scope="session")
def coco_mini_root() -> Path:
    """The four real COCO val2017 images with their real annotations (../shared/data/coco_mini)."""
    root = SHARED_DATA / "coco_mini"
    if not (root / "annotations" / "person_keypoints_val2017.json").is_file():
        pytest.skip(f"real COCO sample not found at {root} (it ships beside the repo in ../shared, "
                    "not inside it; a user's own clone has no such folder)")
    return root


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: reads the real COCO sample in ../shared (skipped "
                                       "without it; a synthetic twin runs everywhere)")


def pytest_collection_modifyitems(config, items):
    """Tests of the real COCO sample are marked `real_data`; tests marked `gpu` run only where CUDA is."""
    for item in items:
        if "coco_mini_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
