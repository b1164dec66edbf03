"""Heatmaps -> keypoint coordinates in the original image.

The inverse of the encoding in `nas.data.transforms`: argmax, a quarter-pixel step towards the higher
neighbour, then the inverse of the crop affine taken at the heatmap resolution. A keypoint that lies on
a heatmap pixel centre decodes back to exactly where it was.
"""
from __future__ import annotations

import numpy as np

from nas.data.transforms import affine_points, get_affine_transform


def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of each heatmap: coords (N, K, 2) as [x, y] heatmap pixels and maxvals (N, K, 1).

    A joint whose maximum is not positive (an empty heatmap) gets coords (0, 0); its maxval, <= 0,
    marks it as not found.
    """
    heatmaps = np.asarray(heatmaps)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)  # (N, K)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2).astype(np.float32)  # (N, K, 1)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)  # (N, K, 2)
    coords *= maxvals > 0
    return coords, maxvals


def refine_quarter_offset(heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Move each argmax a quarter pixel towards its higher neighbour, per axis where both exist."""
    n, k, h, w = heatmaps.shape
    coords = coords.copy()
    px, py = coords[..., 0].astype(int), coords[..., 1].astype(int)  # (N, K)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    ok_x = (px > 0) & (px < w - 1)
    ok_y = (py > 0) & (py < h - 1)
    dx = heatmaps[ni, ki, py, np.clip(px + 1, 0, w - 1)] - heatmaps[ni, ki, py, np.clip(px - 1, 0, w - 1)]
    dy = heatmaps[ni, ki, np.clip(py + 1, 0, h - 1), px] - heatmaps[ni, ki, np.clip(py - 1, 0, h - 1), px]
    coords[..., 0] += 0.25 * np.sign(dx) * ok_x
    coords[..., 1] += 0.25 * np.sign(dy) * ok_y
    return coords


def heatmap_to_image(coords: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """Heatmap-pixel (K, 2) coords of one crop -> image coords (the crop's unrotated inverse affine)."""
    inv = get_affine_transform(center, scale, 0.0, heatmap_size, inv=True)
    return affine_points(coords, inv)


def decode_heatmaps(heatmaps: np.ndarray, centers: np.ndarray,
                    scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) of crops given by centers/scales (N, 2) -> image preds (N, K, 2), maxvals.

    Test crops are never rotated, so the inverse affine has no rotation.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    centers, scales = np.asarray(centers, np.float64), np.asarray(scales, np.float64)
    coords, maxvals = get_max_preds(heatmaps)
    coords = refine_quarter_offset(heatmaps, coords)
    size = heatmaps.shape[2:]
    preds = np.zeros(coords.shape, dtype=np.float64)  # (N, K, 2)
    for i, crop_coords in enumerate(coords):
        preds[i] = heatmap_to_image(crop_coords, centers[i], scales[i], size)
    return preds, maxvals
