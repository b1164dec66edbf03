"""Top-down COCO person-keypoint dataset: one sample per annotated person, cropped around its GT box,
or (for evaluation) one sample per person-detector box, as in HRNet's and SimpleBaseline's test pipeline.

Works on a real COCO download (`root/val2017/`, `root/annotations/person_keypoints_val2017.json`) and on
any dataset written in the same format (images under `root/<split>/` or `root/images/<split>/`).
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from nas.data.bad_images import read_or_next
from nas.data.half_body import COCO_UPPER_BODY, half_body_crop
from nas.data.keypoints import COCO_FLIP_PAIRS, COCO_SIGMAS, NUM_COCO_KEYPOINTS
from nas.data.transforms import (affine_points, box_to_center_scale, flip_keypoints,
                                 generate_heatmaps, get_affine_transform)
from nas.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_BBOX_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"
DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


class UnreadableImageError(OSError):
    """An image file that is missing or that OpenCV cannot decode."""


@dataclass
class InstanceRecord:
    """One person instance: where its image is and the crop that frames it."""
    image_id: int
    ann_id: int
    image_path: Path
    box: np.ndarray        # (4,) clipped [x, y, w, h]
    center: np.ndarray     # (2,) float32 pixels
    scale: np.ndarray      # (2,) float32 crop (w, h) in pixels
    keypoints: np.ndarray  # (K, 3) float32 [x, y, v] image pixels
    score: float = 1.0     # box confidence (1 for ground-truth boxes)


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools COCO index of `ann_file`, without its progress printing."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image; UnreadableImageError naming the file if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise UnreadableImageError(f"cannot read image {path} (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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


class CocoTopDown(Dataset):
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
            raise FileNotFoundError(
                f"keypoint annotations for split {split!r} not found: expected {self.ann_file}")
        self.image_dir = _find_image_dir(root, split)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma, self.train, self.padding = float(sigma), bool(train), float(padding)
        self.scale_factor, self.rot_factor = float(scale_factor), float(rot_factor)
        self.rot_prob, self.flip_prob = float(rot_prob), float(flip_prob)
        self.half_body_prob, self.num_joints_half_body = float(half_body_prob), int(num_joints_half_body)
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
                 name: str = "predictions.json") -> dict[str, float]:
        """OKS AP/AR (pycocotools) of COCO-format `results`; writes them to `out_dir/name` if given."""
        from nas.metrics.coco_eval import evaluate_keypoints
        out_json = Path(out_dir) / name if out_dir is not None else None
        try:
            return evaluate_keypoints(self.coco, results, out_json=out_json, sigmas=self.sigmas)
        except ValueError as err:  # predictions for images this split does not have
            raise UserError(f"{err} ({self.ann_file}); evaluate on the split the predictions are of") \
                from err

    def __getitem__(self, index: int) -> dict:
        if self.train:  # a missing/unreadable image is skipped for the next sample (nas.data.bad_images)
            index, image, skipped = read_or_next(index, len(self.samples),
                                                 lambda i: self.samples[i].image_path, read_rgb)
        else:  # evaluation: an unreadable image is an error naming the file
            image, skipped = read_rgb(self.samples[index].image_path), ""
        record = self.samples[index]  # image: (H0, W0, 3) uint8 RGB
        keypoints = record.keypoints.copy()
        center, scale, rot = record.center.copy(), record.scale.copy(), 0.0
        if self.train:
            image, keypoints, center, scale, rot = self._augment(image, keypoints, center, scale)
        mat = get_affine_transform(center, scale, rot, self.input_size)
        height, width = self.input_size
        crop = cv2.warpAffine(image, mat, (width, height), flags=cv2.INTER_LINEAR)
        keypoints[:, :2] = affine_points(keypoints[:, :2], mat)
        target, target_weight = generate_heatmaps(keypoints, self.input_size, self.heatmap_size,
                                                  self.sigma)
        meta = {"image_id": record.image_id, "center": center.astype(np.float32),
                "scale": scale.astype(np.float32), "score": float(record.score), "index": int(index)}
        if self.train:
            meta["skipped"] = skipped
        return {"image": _normalise(crop), "target": torch.from_numpy(target),
                "target_weight": torch.from_numpy(target_weight), "meta": meta}

    def _augment(self, image: np.ndarray, keypoints: np.ndarray, center: np.ndarray,
                 scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """Half-body crop, random scale, rotation and flip, from torch's RNG (seedable per worker)."""
        center, scale = self._half_body(keypoints, center, scale)
        sf, rf = self.scale_factor, self.rot_factor
        scale = scale * float(np.clip(1.0 + torch.randn(()).item() * sf, 1.0 - sf, 1.0 + sf))
        rot = float(np.clip(torch.randn(()).item() * rf, -2.0 * rf, 2.0 * rf))
        if torch.rand(()).item() >= self.rot_prob:
            rot = 0.0
        if torch.rand(()).item() < self.flip_prob:
            width = image.shape[1]
            image = np.ascontiguousarray(image[:, ::-1])
            keypoints = flip_keypoints(keypoints, width, self.flip_pairs)
            center = np.array([width - 1 - center[0], center[1]], dtype=np.float32)
        return image, keypoints, center, scale, rot

    def _half_body(self, keypoints: np.ndarray, center: np.ndarray,
                   scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """With probability half_body_prob and more than num_joints_half_body labelled joints, the crop of
        a random half of the body (nas.data.half_body); RNG draws only when the probability is > 0."""
        if self.half_body_prob <= 0 or int((keypoints[:, 2] > 0).sum()) <= self.num_joints_half_body:
            return center, scale
        if torch.rand(()).item() >= self.half_body_prob:
            return center, scale
        prefer_upper = torch.rand(()).item() < 0.5
        crop = half_body_crop(keypoints, self.upper_body, self.input_size[1] / self.input_size[0],
                              prefer_upper)
        return (center, scale) if crop is None else crop


def _normalise(crop: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, normalised by the ImageNet mean and std."""
    image = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
