"""What every top-down keypoint dataset shares: one person instance -> a normalised crop with its
heatmap targets, and the training augmentation (half-body, scale, rotation, flip).

A dataset class fills `samples` (InstanceRecord) and sets input/heatmap sizes, sigma, flip pairs,
upper-body joint ids and the augmentation settings; `TopDownDataset` does the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

# UnreadableImageError is re-exported: nas/cli.py and the datasets import it from here
from nas.data.bad_images import UnreadableImageError, read_or_next
from nas.data.half_body import half_body_crop
from nas.data.transforms import affine_points, flip_keypoints, generate_heatmaps, get_affine_transform
from nas.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class MissingSplitError(UserError, FileNotFoundError):
    """A split whose annotation file is absent: the inspector reports it and goes on with the others;
    elsewhere it is the user's to fix (a UserError, and a FileNotFoundError for older callers)."""


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


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image; UnreadableImageError naming the file if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise UnreadableImageError(f"cannot read image {path} (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TopDownDataset(Dataset):
    """Sample building and augmentation shared by CocoTopDown and MpiiTopDown.

    `target_sigmas` (set by `set_target_sigmas`, for networks supervised at several sigmas such as MSPN)
    adds `targets`, (S, K, h, w): one Gaussian target per sigma, same joints and weights as `target`."""

    target_sigmas: tuple[float, ...] = ()

    def _set_pipeline(self, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float,
                      train: bool, padding: float, scale_factor: float, rot_factor: float,
                      rot_prob: float, flip_prob: float, half_body_prob: float,
                      num_joints_half_body: int) -> None:
        """The crop, target and augmentation settings every top-down dataset takes."""
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma, self.train, self.padding = float(sigma), bool(train), float(padding)
        self.scale_factor, self.rot_factor = float(scale_factor), float(rot_factor)
        self.rot_prob, self.flip_prob = float(rot_prob), float(flip_prob)
        self.half_body_prob, self.num_joints_half_body = float(half_body_prob), int(num_joints_half_body)

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
        extra = {}
        if self.target_sigmas:
            extra["targets"] = torch.from_numpy(np.stack([
                generate_heatmaps(keypoints, self.input_size, self.heatmap_size, s)[0] for s in self.target_sigmas]))
        meta = {"image_id": record.image_id, "center": center.astype(np.float32),
                "scale": scale.astype(np.float32), "score": float(record.score), "index": int(index)}
        if self.train:
            meta["skipped"] = skipped
        return {"image": normalise(crop), "target": torch.from_numpy(target),
                "target_weight": torch.from_numpy(target_weight), "meta": meta, **extra}

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


def set_target_sigmas(dataset: Dataset, sigmas: list[float]) -> None:
    """Make `dataset` (or the top-down dataset inside a Subset / wrapper) return a target per sigma."""
    inner = dataset
    while not isinstance(inner, TopDownDataset) and hasattr(inner, "dataset"):
        inner = inner.dataset
    if not isinstance(inner, TopDownDataset):
        raise TypeError(f"{type(dataset).__name__} makes no heatmap targets")
    inner.target_sigmas = tuple(float(s) for s in sigmas)


def normalise(crop: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, normalised by the ImageNet mean and std."""
    image = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
