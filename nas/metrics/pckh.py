"""PCKh, the MPII metric: a joint is correct when its error is at most `threshold` x the person's head size.

Conventions, as in the MPII evaluation code and HRNet/MMPose's copies of it:
- head size = 0.6 x the diagonal of the person's annotated head box (`headboxes_src` of `gt_valid.mat`);
- a prediction is correct when `error / head_size <= threshold`; only visible (not missing) joints count;
- the table's Head is the head_top joint; Shoulder, Elbow, ... average the left and right joints' PCKh;
- Mean pools all 14 joints except pelvis and thorax (upper_neck is in Mean, though not in a column),
  weighting each joint by its number of visible instances: correct / visible over those joints.
- "@0.1" is at exactly 0.1. HRNet's `Mean@0.1` (lib/dataset/mpii.py) and MMPose 0.x's `PCKh@0.1`
  (topdown_mpii_dataset.py) read row 11 of `np.arange(0, 0.5 + 0.01, 0.01)`, which is the threshold
  0.11, so the numbers published from those code bases under "0.1" are slightly higher; MMPose 1.x's
  `MpiiPCKAccuracy` reads row 10 (exactly 0.1). The table therefore has both: "Mean@0.1" (exact) and
  "Mean@0.1_hrnet(0.11)" (HRNet's and MMPose 0.x's number, to compare with their tables).

All coordinates are 0-based pixels; `gt_valid.mat` (1-based, MATLAB) is shifted by -1 on load, which is
the same as HRNet adding 1 to its predictions.

Without `gt_valid.mat` the head boxes are unknown. The fallback (`head_size_source` says which was used)
takes the head segment length itself, the distance head_top to upper_neck: the MPII paper (Andriluka et
al., CVPR 2014) defines PCKh's threshold as a fraction of the head segment length, and 0.6 x the head box
diagonal is how its code estimates that length from the annotated box. The two agree only approximately,
so fallback numbers are not the benchmark's; a person without both head joints visible is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# The short names of the 16 MPII joints in `gt_valid.mat`'s `dataset_joints`, in posenas's joint order
# (that of the json conversion, nas.data.mpii.MPII_JOINTS). The metric needs only these, so it imports
# nothing from the dataset module (which imports it).
MPII_MAT_NAMES: tuple[str, ...] = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
    "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri",
)
HEAD_SIZE_FACTOR = 0.6  # MPII's SC_BIAS: head size = 0.6 x head box diagonal
HRNET_MEAN01_THRESHOLD = 0.11  # np.arange(0, 0.5 + 0.01, 0.01)[11]: what HRNet's "Mean@0.1" uses
HRNET_MEAN01_KEY = "Mean@0.1_hrnet(0.11)"
MEAN_JOINTS: tuple[int, ...] = tuple(i for i in range(len(MPII_MAT_NAMES)) if i not in (6, 7))
TABLE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Head", (9,)), ("Shoulder", (12, 13)), ("Elbow", (11, 14)), ("Wrist", (10, 15)),
    ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5)),
)
SOURCE_MAT = "gt_valid.mat head boxes"
SOURCE_FALLBACK = "head segment length head_top-upper_neck (approximation: no gt .mat found)"


@dataclass
class PckhGroundTruth:
    """What PCKh compares against: joints (N, 16, 2) 0-based, visible (N, 16), head sizes (N,)."""
    joints: np.ndarray
    visible: np.ndarray
    head_sizes: np.ndarray
    source: str


def joint_hits(preds: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray,
               threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per joint: number of visible instances predicted within `threshold` head sizes, and of visible ones."""
    preds, gt = np.asarray(preds, np.float64), np.asarray(gt, np.float64)
    visible = np.asarray(visible).astype(bool)
    if preds.shape != gt.shape or visible.shape != gt.shape[:2]:
        raise ValueError(f"shapes differ: preds {preds.shape}, gt {gt.shape}, visible {visible.shape}")
    errors = np.linalg.norm(preds - gt, axis=2)  # (N, K) pixels
    sizes = np.asarray(head_sizes, np.float64)[:, None]  # (N, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (errors / sizes <= threshold) & visible
    return hit.sum(axis=0), visible.sum(axis=0)


def pckh(preds: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_sizes: np.ndarray,
         threshold: float = 0.5,
         mean_joints: Sequence[int] = MEAN_JOINTS) -> tuple[np.ndarray, float]:
    """Per-joint PCKh (K,) in percent (NaN for a joint never visible) and the pooled Mean over `mean_joints`.

    `head_sizes` is the normaliser itself (0.6 x head box diagonal in the MPII convention).
    """
    hits, counts = joint_hits(preds, gt, visible, head_sizes, threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_joint = 100.0 * hits / counts
    idx = list(mean_joints)
    total = counts[idx].sum()
    mean = 100.0 * hits[idx].sum() / total if total else float("nan")
    return per_joint, float(mean)


def pckh_table(preds: np.ndarray, gt: np.ndarray, visible: np.ndarray,
               head_sizes: np.ndarray) -> dict[str, float]:
    """The literature's table: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Mean at 0.5, then at 0.1,
    then HRNet's "Mean@0.1" (threshold 0.11, module doc) under HRNET_MEAN01_KEY."""
    table: dict[str, float] = {}
    for threshold, suffix in ((0.5, ""), (0.1, "@0.1")):
        per_joint, mean = pckh(preds, gt, visible, head_sizes, threshold)
        for name, joints in TABLE:
            table[name + suffix] = float(np.mean(per_joint[list(joints)]))
        table["Mean" + suffix] = mean
    table[HRNET_MEAN01_KEY] = pckh(preds, gt, visible, head_sizes, HRNET_MEAN01_THRESHOLD)[1]
    return table


def _mat_joint_order(dataset_joints: np.ndarray) -> list[int]:
    """Index of each of our joints in the .mat's joint axis, from its `dataset_joints` names."""
    names = [str(np.squeeze(n)) for n in np.asarray(dataset_joints, dtype=object).ravel()]
    missing = [m for m in MPII_MAT_NAMES if m not in names]
    if missing:
        raise ValueError(f"dataset_joints of the gt .mat lacks {missing}; found {names}")
    return [names.index(m) for m in MPII_MAT_NAMES]


def load_gt_mat(path: str | Path) -> PckhGroundTruth:
    """Ground truth from the official-style `gt_valid.mat` (`pos_gt_src` (16, 2, N), `jnt_missing` (16, N),
    `headboxes_src` (2, 2, N) = [[x1, y1], [x2, y2]] per person, `dataset_joints` names)."""
    from scipy.io import loadmat
    mat = loadmat(str(path))
    order = _mat_joint_order(mat["dataset_joints"])
    joints = np.transpose(mat["pos_gt_src"], (2, 0, 1))[:, order].astype(np.float64) - 1.0
    visible = (1 - np.asarray(mat["jnt_missing"])).T[:, order].astype(bool)
    boxes = np.asarray(mat["headboxes_src"], np.float64)  # (2, 2, N)
    diag = np.linalg.norm(boxes[1] - boxes[0], axis=0)  # (N,)
    return PckhGroundTruth(joints, visible, HEAD_SIZE_FACTOR * diag, SOURCE_MAT)


def gt_from_joints(joints: np.ndarray, visible: np.ndarray) -> PckhGroundTruth:
    """Fallback ground truth from 0-based joints (N, 16, 2) and visibility (N, 16): head size = the head
    segment length head_top-upper_neck (module doc); a person without both visible is left out (NaN)."""
    joints, visible = np.asarray(joints, np.float64), np.asarray(visible).astype(bool)
    segment = np.linalg.norm(joints[:, 9] - joints[:, 8], axis=1)  # head_top - upper_neck
    usable = visible[:, 8] & visible[:, 9] & (segment > 0)
    head_sizes = np.where(usable, segment, np.nan)
    return PckhGroundTruth(joints, visible & usable[:, None], head_sizes, SOURCE_FALLBACK)
