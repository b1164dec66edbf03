"""Top-down MPII Human Pose dataset in the widely used json conversion (HRNet layout).

Layout: `root/annot/{train,valid}.json` and `root/images/*.jpg`. Each json file is a list of people:
`{"image": "015601864.jpg", "center": [x, y], "scale": s, "joints": [[x, y] x 16], "joints_vis": [0/1 x 16]}`.

Conventions assumed (the ones HRNet and MMPose assume for these files):
- Coordinates in the json are the original MATLAB ones, **1-based**: the json conversion copies the numbers of
  `mpii_human_pose_v1_u12_1.mat` unchanged, and HRNet subtracts 1 from `center` and `joints` on load (and
  adds 1 to its predictions before comparing with `gt_valid.mat`). We subtract 1 too (`one_based=True`), so
  everything inside posenas is in 0-based pixel-centre coordinates, as for COCO. Pass `one_based=False` for
  a conversion that already stores 0-based coordinates.
- `scale` is in units of 200 px: the person box is a square of side `scale * 200` px around `center`.
- Like HRNet/MMPose, the centre is first moved down by `15 * scale` px (MPII centres sit high, near the
  belly; the shift avoids cutting the feet), and the square is then enlarged by `padding` (1.25).
  For a non-square input the square is widened (or heightened) to the input's aspect ratio, never cut;
  the result is our pixel `scale = (w, h)` crop size.
- Joints with `joints_vis == 0` are unlabelled (their coordinates are often -1): weight 0, no target.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.data.topdown import InstanceRecord, TopDownDataset
from nas.data.half_body import MPII_UPPER_BODY
from nas.data.transforms import box_to_center_scale
from nas.metrics.pckh import MPII_MAT_NAMES, PckhGroundTruth, gt_from_joints, load_gt_mat, pckh_table

MPII_JOINTS: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
# Their short names in `gt_valid.mat` (MPII_MAT_NAMES, same order) live with the metric, which reads it.
MPII_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
NUM_MPII_JOINTS = len(MPII_JOINTS)
PIXEL_STD = 200.0  # MPII's `scale` unit, in pixels
CENTER_SHIFT = 15.0  # px per unit of scale that the box centre is moved down


@dataclass
class MpiiPerson:
    """One entry of an MPII json file, coordinates as stored there (see `one_based`)."""
    image: str
    center: np.ndarray   # (2,) [x, y]
    scale: float         # box side / 200 px
    joints: np.ndarray   # (16, 2) [x, y]
    visible: np.ndarray  # (16,) bool


def read_mpii_json(path: str | Path) -> list[MpiiPerson]:
    """The people of an MPII json conversion file, in file order (the order of `gt_valid.mat`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPII annotations not found: expected {path}")
    people = []
    for entry in json.loads(path.read_text()):
        joints = np.asarray(entry.get("joints", np.zeros((NUM_MPII_JOINTS, 2))), dtype=np.float64)
        visible = np.asarray(entry.get("joints_vis", np.zeros(NUM_MPII_JOINTS)), dtype=np.float64) > 0
        people.append(MpiiPerson(image=str(entry["image"]),
                                 center=np.asarray(entry["center"], dtype=np.float64),
                                 scale=float(entry["scale"]),
                                 joints=joints.reshape(NUM_MPII_JOINTS, 2), visible=visible))
    return people


def load_mpii_gt(root: str | Path, split: str = "valid", one_based: bool = True) -> PckhGroundTruth:
    """PCKh ground truth: `root/annot/gt_<split>.mat` if it exists, else the (warned) fallback from
    `root/annot/<split>.json` (head size = head segment length, nas.metrics.pckh)."""
    annot = Path(root) / "annot"
    mat_path = annot / f"gt_{split}.mat"
    if mat_path.is_file():
        return load_gt_mat(mat_path)
    warnings.warn(f"PCKh: {mat_path} not found; head sizes are the head_top-upper_neck distances, "
                  "an approximation, so the numbers are not the official MPII ones", stacklevel=2)
    people = read_mpii_json(annot / f"{split}.json")
    joints = np.stack([p.joints for p in people]) - (1.0 if one_based else 0.0)  # (N, 16, 2)
    return gt_from_joints(joints, np.stack([p.visible for p in people]))


def evaluate_mpii(preds: np.ndarray, root: str | Path, split: str = "valid",
                  one_based: bool = True) -> dict[str, float | str]:
    """PCKh table of predictions (N, 16, 2), 0-based image pixels in the json's person order.

    The result's `head_size_source` says whether the official head boxes or the fallback were used, and
    `people_without_head_size` how many people the fallback had to leave out.
    """
    gt = load_mpii_gt(root, split, one_based)
    preds = np.asarray(preds, np.float64)
    if preds.shape != gt.joints.shape:
        raise ValueError(f"predictions {preds.shape} do not match the {split} ground truth "
                         f"{gt.joints.shape} (one row per person, in the json's order)")
    result: dict[str, float | str] = dict(pckh_table(preds, gt.joints, gt.visible, gt.head_sizes))
    result["head_size_source"] = gt.source
    result["people_without_head_size"] = int(np.isnan(gt.head_sizes).sum())
    return result


def mpii_center_scale(center: np.ndarray, scale_200: float, aspect_ratio: float,
                      padding: float = 1.25, shift: float = CENTER_SHIFT,
                      one_based: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Our (center, pixel crop size (w, h)) for an MPII (center, scale) pair.

    The centre moves down by `shift * scale_200` px (then by -1 px per axis if 1-based); the square of
    side `200 * scale_200` is grown to `aspect_ratio` (the input's W / H) and enlarged by `padding`.
    """
    cx, cy = float(center[0]), float(center[1]) + shift * scale_200
    if one_based:
        cx, cy = cx - 1.0, cy - 1.0
    side = PIXEL_STD * scale_200
    box = (cx - 0.5 * side, cy - 0.5 * side, side, side)
    return box_to_center_scale(box, aspect_ratio, padding)


class MpiiTopDown(TopDownDataset):
    """The people of an MPII split, each as a normalised crop with heatmap targets (CocoTopDown's contract).

    Every json entry becomes one sample, in file order, so `meta["index"]` is the position of the person
    in `valid.json` and in `gt_valid.mat`; `image_id` numbers the distinct images (`image_names[id]`).
    `primary_metric` and `evaluate` are the per-dataset metric hook (PCKh, nas.metrics.pckh).
    """

    primary_metric = "PCKh"

    def __init__(self, root: str | Path, split: str, input_size: tuple[int, int] = (256, 256),
                 heatmap_size: tuple[int, int] = (64, 64), sigma: float = 2.0, train: bool = False,
                 scale_factor: float = 0.25, rot_factor: float = 30.0, rot_prob: float = 0.6,
                 flip_prob: float = 0.5, padding: float = 1.25, one_based: bool = True,
                 half_body_prob: float = 0.0, num_joints_half_body: int = 8,
                 max_samples: int | None = None) -> None:
        root = Path(root)
        self.root, self.split = root, split
        self.head_size_source: str | None = None  # set by evaluate(): official head boxes or fallback
        self.ann_file = root / "annot" / f"{split}.json"
        self.image_dir = root / "images"
        self._set_pipeline(input_size, heatmap_size, sigma, train, padding, scale_factor, rot_factor,
                           rot_prob, flip_prob, half_body_prob, num_joints_half_body)
        self.upper_body = MPII_UPPER_BODY
        self.one_based = bool(one_based)
        self.num_keypoints = NUM_MPII_JOINTS
        self.flip_pairs = MPII_FLIP_PAIRS
        self.people = read_mpii_json(self.ann_file)
        self.image_names = sorted({p.image for p in self.people})
        self._image_ids = {name: i for i, name in enumerate(self.image_names)}
        self.samples: list[InstanceRecord] = [self._make_record(i, p) for i, p in enumerate(self.people)]
        if max_samples is not None:
            self.samples = self.samples[:max_samples]

    def _make_record(self, index: int, person: MpiiPerson) -> InstanceRecord:
        aspect = self.input_size[1] / self.input_size[0]
        center, scale = mpii_center_scale(person.center, person.scale, aspect, self.padding,
                                          one_based=self.one_based)
        joints = person.joints - (1.0 if self.one_based else 0.0)
        keypoints = np.concatenate([joints, person.visible[:, None]], axis=1).astype(np.float32)
        keypoints[~person.visible, :2] = 0.0
        side = PIXEL_STD * person.scale
        box = np.array([center[0] - side / 2, center[1] - side / 2, side, side], dtype=np.float32)
        return InstanceRecord(image_id=self._image_ids[person.image], ann_id=index,
                              image_path=self.image_dir / person.image, box=box,
                              center=center, scale=scale, keypoints=keypoints)

    def __len__(self) -> int:
        return len(self.samples)

    def evaluate(self, results: list[dict], out_dir: Path | None = None) -> dict[str, float]:
        """PCKh table of COCO-format `results` (one per sample, matched by their `index`), as floats.

        "PCKh" is Mean@0.5. Only this dataset's samples count (the first `max_samples` people); a sample
        without a prediction counts as missed. The head-size source goes to `self.head_size_source`
        and the log. With `out_dir`, the results are written to `out_dir/predictions.json`.
        """
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "predictions.json").write_text(json.dumps(results))
        preds = self._predictions_by_index(results)  # (N, 16, 2), NaN where no prediction
        gt = load_mpii_gt(self.root, self.split, self.one_based)
        n = len(self.samples)
        if gt.joints.shape[0] < n:
            raise ValueError(f"the PCKh ground truth of {self.split!r} has {gt.joints.shape[0]} people, "
                             f"fewer than the {n} of {self.ann_file}")
        table = pckh_table(preds, gt.joints[:n], gt.visible[:n], gt.head_sizes[:n])
        if self.head_size_source != gt.source:  # logged once, not at every evaluation
            logging.getLogger("posenas").info("PCKh head sizes: %s", gt.source)
        self.head_size_source = gt.source
        scores = {"PCKh": table["Mean"], **table}
        scores["people_without_head_size"] = float(np.isnan(gt.head_sizes[:n]).sum())
        return scores

    def _predictions_by_index(self, results: list[dict]) -> np.ndarray:
        """(N, 16, 2) joints of the best-scoring result of each sample; NaN rows for samples without one."""
        preds = np.full((len(self.samples), self.num_keypoints, 2), np.nan)
        best = np.full(len(self.samples), -np.inf)
        for result in results:
            if "index" not in result:
                raise ValueError("MPII evaluation needs each result's sample `index` (from meta['index'])")
            i = int(result["index"])
            if not 0 <= i < len(self.samples):
                raise ValueError(f"result index {i} is outside the {len(self.samples)} samples of "
                                 f"{self.ann_file}")
            if float(result.get("score", 0.0)) > best[i]:
                best[i] = float(result.get("score", 0.0))
                preds[i] = np.asarray(result["keypoints"], np.float64).reshape(-1, 3)[:, :2]
        return preds

