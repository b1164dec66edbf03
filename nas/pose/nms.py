"""OKS-based non-maximum suppression of predicted poses, as in the HRNet / SimpleBaseline test pipeline.

With detector boxes, one person is often found by several boxes, and each box yields a pose. Poses
are compared by their object keypoint similarity (OKS), computed between two *predictions*, with the
predicted instance's `area` standing in for the ground-truth area (HRNet uses the padded crop area,
`scale_w * scale_h`). An instance is a mapping with `keypoints` ((K, 3) or flat 3K: x, y, confidence),
`score` and `area`; results of `nas.pose.predict` have that form. Pure numpy.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

NMS_METHODS = ("oks", "soft_oks")


def _keypoints(instance: Mapping) -> np.ndarray:
    return np.asarray(instance["keypoints"], dtype=np.float64).reshape(-1, 3)  # (K, 3)


def oks_iou(keypoints: np.ndarray, others: np.ndarray, area: float, other_areas: np.ndarray,
            sigmas: Sequence[float], vis_threshold: float | None = None) -> np.ndarray:
    """(N,) OKS between one pose (K, 3) and each of `others` (N, K, 3), areas in pixels².

    Per joint: exp(-d² / (2 s² k²)) with s² the mean of the two areas and k = 2 sigma (COCO's
    definition), averaged over the joints. With `vis_threshold`, only joints whose confidence exceeds
    it in both poses count, and a pair with no such joint has OKS 0 (HRNet's `in_vis_thre`).
    """
    others = np.asarray(others, dtype=np.float64).reshape(len(other_areas), -1, 3)
    k2 = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # (K,)
    d2 = ((others[:, :, :2] - keypoints[None, :, :2]) ** 2).sum(axis=2)  # (N, K)
    s2 = (area + np.asarray(other_areas, dtype=np.float64)) / 2.0 + np.spacing(1)  # (N,)
    sim = np.exp(-d2 / k2[None, :] / s2[:, None] / 2.0)  # (N, K)
    if vis_threshold is None:
        return sim.mean(axis=1)
    used = (keypoints[None, :, 2] > vis_threshold) & (others[:, :, 2] > vis_threshold)  # (N, K)
    count = used.sum(axis=1)
    return np.where(count > 0, (sim * used).sum(axis=1) / np.maximum(count, 1), 0.0)


def _arrays(instances: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keypoints = np.stack([_keypoints(inst) for inst in instances])  # (N, K, 3)
    scores = np.array([float(inst["score"]) for inst in instances])
    areas = np.array([float(inst["area"]) for inst in instances])
    return keypoints, scores, areas


def oks_nms(instances: Sequence[Mapping], threshold: float, sigmas: Sequence[float],
            vis_threshold: float | None = None) -> list[int]:
    """Indices of the instances kept by greedy OKS-NMS, highest score first.

    Repeatedly keeps the best-scoring remaining instance and drops every other one whose OKS with it
    exceeds `threshold` (HRNet uses 0.9).
    """
    if not instances:
        return []
    keypoints, scores, areas = _arrays(instances)
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        if not len(rest):
            break
        oks = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas, vis_threshold)
        order = list(rest[oks <= threshold])
    return keep


def soft_oks_nms(instances: Sequence[Mapping], threshold: float, sigmas: Sequence[float],
                 method: str = "gaussian", sigma: float = 0.5,
                 vis_threshold: float | None = None) -> np.ndarray:
    """(N,) decayed scores of soft OKS-NMS (Bodla et al. 2017, with OKS in place of box IoU).

    Visits instances by decreasing (decayed) score; each visited one lowers the scores of those not yet
    visited: "gaussian" multiplies by exp(-oks² / sigma) whatever the overlap, "linear" by (1 - oks)
    where oks > `threshold` only. Nothing is removed; an instance far from all others keeps its score.
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft OKS-NMS method must be 'gaussian' or 'linear', got {method!r}")
    if not instances:
        return np.zeros(0)
    keypoints, scores, areas = _arrays(instances)
    remaining = list(range(len(instances)))
    while len(remaining) > 1:
        best = max(remaining, key=lambda i: scores[i])
        remaining.remove(best)
        rest = np.array(remaining, dtype=int)
        oks = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas, vis_threshold)
        if method == "gaussian":
            scores[rest] *= np.exp(-oks ** 2 / sigma)
        else:
            scores[rest] *= np.where(oks > threshold, 1.0 - oks, 1.0)
    return scores


def nms_per_image(results: Sequence[dict], method: str, threshold: float, sigmas: Sequence[float],
                  vis_threshold: float | None = None) -> list[dict]:
    """COCO keypoint results after OKS-NMS within each image ("oks" drops, "soft_oks" rescores).

    Soft NMS uses its linear form here, so `threshold` means the same in both methods.
    """
    if method not in NMS_METHODS:
        raise ValueError(f"nms must be one of {', '.join(NMS_METHODS)} or null, got {method!r}")
    by_image: dict[int, list[dict]] = defaultdict(list)
    for result in results:
        by_image[int(result["image_id"])].append(result)
    kept: list[dict] = []
    for image_id in sorted(by_image):
        group = by_image[image_id]
        if method == "oks":
            kept += [group[i] for i in oks_nms(group, threshold, sigmas, vis_threshold)]
        else:
            scores = soft_oks_nms(group, threshold, sigmas, "linear", vis_threshold=vis_threshold)
            kept += [{**r, "score": float(s)} for r, s in zip(group, scores)]
    return kept
