"""Top-down COCO person-keypoint dataset: one sample per annotated person, cropped around its GT box,
or (for evaluation) one sample per person-detector box, as in HRNet's and SimpleBaseline's test pipeline.

Works on a real COCO download (`root/val2017/`, `root/annotations/person_keypoints_val2017.json`) and on
any dataset written in the same format (images under `root/<split>/` or `root/images/<split>/`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nas.data.half_body import COCO_UPPER_BODY
from nas.data.keypoints import COCO_FLIP_PAIRS, COCO_SIGMAS, NUM_COCO_KEYPOINTS
from nas.data.transforms import box_to_center_scale
# re-exported: other modules import these names from here
from nas.data.topdown import (IMAGENET_MEAN, IMAGENET_STD, InstanceRecord,  # noqa: F401
                              MissingSplitError, TopDownDataset, UnreadableImageError, read_rgb)
from nas.errors import UserError
# load_coco is re-exported too; the dataset -> metric direction is the only one (nas.metrics.coco_eval)
from nas.metrics.coco_eval import evaluate_keypoints, load_coco

DEFAULT_BBOX_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"
DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


def clip_box(box_xywh: list[float], width: int, height: int) -> np.ndarray | None:
    """Box clipped to the image as HRNet does, as [x, y, w, h]; None when nothing of it remains."""
    x, y, bw, bh = box_xywh
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, bw - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, bh - 1.0))
    if (x2 - x1) * (y2 - y1) <= 0 or x2 < x1 or y2 < y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)


def read_detections(path: Path) -> list[dict]:
    """The entries of a COCO detection file, checked: a list of {image_id, category_id, bbox, score}."""
    if not path.is_file():
        raise FileNotFoundError(
            f"person detection file not found: expected {path} (a COCO-format list of "
            "{image_id, category_id, bbox, score}; set data.bbox_file or use data.use_gt_bbox=true)")
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"detection file {path} is not valid JSON: {err}") from err
    if not isinstance(entries, list):
        raise ValueError(f"detection file {path} must hold a JSON list of detections, "
                         f"got a {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in DETECTION_KEYS) \
                or not isinstance(entry["bbox"], list) or len(entry["bbox"]) != 4:
            raise ValueError(f"detection file {path}: entry {i} is not a dict with keys "
                             f"{', '.join(DETECTION_KEYS)} and a 4-number bbox: {str(entry)[:120]}")
    return entries


def _find_image_dir(root: Path, split: str) -> Path:
    candidates = [root / split, root / "images" / split]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no image folder for split {split!r}: expected {candidates[0]} or {candidates[1]}")


class CocoTopDown(TopDownDataset):
    """Person instances of a COCO keypoint file, each as a normalised crop with its heatmap targets.

    `primary_metric` and `evaluate` are the per-dataset metric hook that retrain/evaluate use.
    """

    primary_metric = "AP"

    def __init__(self, root: str | Path, split: str, input_size: tuple[int, int] = (256, 192),
                 heatmap_size: tuple[int, int] = (64, 48), sigma: float = 2.0, train: bool = False,
                 scale_factor: float = 0.35, rot_factor: float = 45.0, rot_prob: float = 0.6,
                 flip_prob: float = 0.5, padding: float = 1.25,
                 half_body_prob: float = 0.0, num_joints_half_body: int = 8,
                 max_samples: int | None = None, use_gt_bbox: bool = True,
                 bbox_file: str | Path | None = None, det_score_threshold: float = 0.0) -> None:
        """`use_gt_bbox=False` crops around the person boxes of `bbox_file` (relative to `root`;
        default DEFAULT_BBOX_FILE) with score >= `det_score_threshold`, for evaluation only."""
        if train and not use_gt_bbox:
            raise ValueError("detector boxes (use_gt_bbox=False) are for evaluation only; "
                             "the training split needs ground-truth boxes")
        root = Path(root)
        self.ann_file = root / "annotations" / f"person_keypoints_{split}.json"
        if not self.ann_file.is_file():
            raise MissingSplitError(
                f"keypoint annotations for split {split!r} not found: expected {self.ann_file}")
        self.image_dir = _find_image_dir(root, split)
        self._set_pipeline(input_size, heatmap_size, sigma, train, padding, scale_factor, rot_factor,
                           rot_prob, flip_prob, half_body_prob, num_joints_half_body)
        self.upper_body = COCO_UPPER_BODY
        self.num_keypoints = NUM_COCO_KEYPOINTS
        self.flip_pairs = COCO_FLIP_PAIRS
        self.sigmas = np.array(COCO_SIGMAS, dtype=np.float32)
        self.coco = load_coco(self.ann_file)
        self.dropped: dict[str, int] = {"iscrowd": 0, "degenerate_box": 0, "no_keypoints": 0}
        self.use_gt_bbox = bool(use_gt_bbox)
        if self.use_gt_bbox:
            self.samples: list[InstanceRecord] = self._load_samples()
        else:
            self.bbox_file = root / (bbox_file if bbox_file is not None else DEFAULT_BBOX_FILE)
            self.samples = self._load_detection_samples(read_detections(self.bbox_file),
                                                        float(det_score_threshold))
        if max_samples is not None:
            self.samples = self.samples[:max_samples]

    def _load_samples(self) -> list[InstanceRecord]:
        """Keep the usable person annotations, counting the others in `self.dropped` by reason."""
        samples = []
        for image_id in sorted(self.coco.getImgIds()):
            info = self.coco.loadImgs(image_id)[0]
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=[1])):
                record = self._make_record(ann, info)
                if record is not None:
                    samples.append(record)
        return samples

    def _load_detection_samples(self, detections: list[dict], threshold: float) -> list[InstanceRecord]:
        """One record per person box scoring >= `threshold`, in file order, with unlabelled keypoints.

        Boxes are used as given, not clipped (as HRNet does); those without area count as degenerate.
        `ann_id` is the box's index in the detection file.
        """
        known = set(self.coco.getImgIds())
        unknown = sorted({int(d["image_id"]) for d in detections} - known)
        if unknown:
            raise ValueError(f"detection file {self.bbox_file} names {len(unknown)} image ids absent from "
                             f"{self.ann_file}, e.g. {unknown[:5]}; use the detections of this split")
        samples = []
        for index, det in enumerate(detections):
            if int(det["category_id"]) != 1 or float(det["score"]) < threshold:
                continue
            box = np.array(det["bbox"], dtype=np.float32)
            if box[2] <= 0 or box[3] <= 0:
                self.dropped["degenerate_box"] += 1
                continue
            info = self.coco.loadImgs(int(det["image_id"]))[0]
            center, scale = box_to_center_scale(box, self.input_size[1] / self.input_size[0], self.padding)
            samples.append(InstanceRecord(
                image_id=int(info["id"]), ann_id=index, image_path=self.image_dir / info["file_name"],
                box=box, center=center, scale=scale, score=float(det["score"]),
                keypoints=np.zeros((self.num_keypoints, 3), dtype=np.float32)))
        return samples

    def _make_record(self, ann: dict, info: dict) -> InstanceRecord | None:
        if ann.get("iscrowd", 0):
            self.dropped["iscrowd"] += 1
            return None
        box = clip_box(ann["bbox"], info["width"], info["height"])
        if box is None:
            self.dropped["degenerate_box"] += 1
            return None
        keypoints = np.array(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        if ann.get("num_keypoints", int((keypoints[:, 2] > 0).sum())) == 0:
            self.dropped["no_keypoints"] += 1
            return None
        aspect = self.input_size[1] / self.input_size[0]
        center, scale = box_to_center_scale(box, aspect, self.padding)
        return InstanceRecord(image_id=int(info["id"]), ann_id=int(ann["id"]),
                              image_path=self.image_dir / info["file_name"], box=box,
                              center=center, scale=scale, keypoints=keypoints)

    def __len__(self) -> int:
        return len(self.samples)

    def evaluate(self, results: list[dict], out_dir: Path | None = None,
                 name: str = "predictions.json", image_ids: list[int] | None = None) -> dict[str, float]:
        """OKS AP/AR (pycocotools) of COCO-format `results`; writes them to `out_dir/name` if given.
        `image_ids` restricts the ground truth to those images."""
        out_json = Path(out_dir) / name if out_dir is not None else None
        try:
            return evaluate_keypoints(self.coco, results, out_json=out_json, sigmas=self.sigmas,
                                      image_ids=image_ids)
        except ValueError as err:  # predictions for images this split does not have
            raise UserError(f"{err} ({self.ann_file}); evaluate on the split the predictions are of") \
                from err
