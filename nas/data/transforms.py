"""Geometry of the top-down crop: boxes to crops, points through affines, flips and heatmap targets.

One coordinate convention is used everywhere (the "pixel-centre" convention, as in UDP, Huang et al.
CVPR 2020): a pixel with index `i` covers `[i - 0.5, i + 0.5]`, so its centre has coordinate `i`. This is
what `cv2.warpAffine` assumes, and it makes every mapping below exact and invertible:

- a crop of `scale = (w, h)` image pixels around `center` fills an output of `(H, W)` pixels edge to edge;
  the box centre lands on the output centre `((W - 1) / 2, (H - 1) / 2)`;
- an input pixel coordinate `x` lies at heatmap coordinate `(x + 0.5) * w_hm / W - 0.5`;
- a horizontal flip of an image `W` pixels wide sends `x` to `W - 1 - x`.

Because of this, decoding (`nas.pose.decode`) only needs the inverse of the same affine, and flip testing
needs no one-pixel shift.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nas.data.keypoints import flip_permutation


def box_to_center_scale(box_xywh: Sequence[float], aspect_ratio: float,
                        padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and crop size (pixels, `(w, h)`) of a box grown to the input's aspect ratio, then padded.

    `aspect_ratio` is the input's W / H; the box is only ever enlarged (never cut) to reach it, so the
    whole person stays in the crop; `padding` adds context around it.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    scale = np.array([w, h], dtype=np.float32) * padding
    return center, scale


def get_affine_transform(center: Sequence[float], scale: Sequence[float], rot_deg: float,
                         output_size: tuple[int, int], inv: bool = False) -> np.ndarray:
    """The (2, 3) affine taking image coords to crop coords (or back, with `inv=True`).

    The `scale = (w, h)` pixel region around `center`, turned by `rot_deg`, fills an `output_size = (H, W)`
    crop edge to edge. A positive `rot_deg` turns the image content counter-clockwise in the crop.
    """
    cx, cy = float(center[0]), float(center[1])
    out_h, out_w = output_size
    sx, sy = out_w / float(scale[0]), out_h / float(scale[1])
    theta = np.deg2rad(rot_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # crop = S @ R(-theta) @ (p - c) + o, with o the crop centre in pixel-centre coordinates
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]], dtype=np.float64)
    origin = np.array([(out_w - 1) / 2.0, (out_h - 1) / 2.0])
    full = np.eye(3)
    full[:2, :2] = linear
    full[:2, 2] = origin - linear @ np.array([cx, cy])
    if inv:
        full = np.linalg.inv(full)
    return full[:2].astype(np.float64)


def affine_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ mat[:, :2].T + mat[:, 2]


def flip_keypoints(keypoints: np.ndarray, image_width: int,
                   flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Keypoints (K, 3) of the horizontally mirrored image: x -> W - 1 - x, left/right joints swapped."""
    flipped = np.array(keypoints, copy=True)
    flipped[:, 0] = image_width - 1 - flipped[:, 0]
    perm = flip_permutation(tuple(flip_pairs), len(flipped))
    return flipped[perm]


def input_to_heatmap(points: np.ndarray, input_size: tuple[int, int],
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """Input-pixel (N, 2) [x, y] coordinates -> heatmap-pixel coordinates (pixel-centre convention)."""
    ratio = np.array([heatmap_size[1] / input_size[1], heatmap_size[0] / input_size[0]])
    return (np.asarray(points, dtype=np.float64) + 0.5) * ratio - 0.5


def generate_heatmaps(keypoints: np.ndarray, input_size: tuple[int, int],
                      heatmap_size: tuple[int, int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian targets (K, h, w) and weights (K, 1) for keypoints (K, 3) given in input-pixel coords.

    Each Gaussian is centred on the keypoint's exact (sub-pixel) heatmap position, so the targets carry no
    quantisation bias (DARK/UDP style; HRNet rounds the centre to a pixel instead), and it is cut to a
    square of half-width 3 sigma, as HRNet does. A keypoint gets weight 0 when it is not labelled (v == 0)
    or when its cut Gaussian covers no heatmap pixel; its target is then all zeros.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    h, w = heatmap_size
    mu = input_to_heatmap(keypoints[:, :2], input_size, heatmap_size)  # (K, 2) [u, v]
    radius = 3.0 * sigma
    gx = _gaussian_1d(np.arange(w), mu[:, 0], sigma, radius)  # (K, w)
    gy = _gaussian_1d(np.arange(h), mu[:, 1], sigma, radius)  # (K, h)
    inside = gx.any(axis=1) & gy.any(axis=1)
    weight = ((keypoints[:, 2] > 0) & inside).astype(np.float32)  # (K,)
    target = gy[:, :, None] * gx[:, None, :] * weight[:, None, None]  # (K, h, w)
    return target.astype(np.float32), weight[:, None]


def _gaussian_1d(grid: np.ndarray, mu: np.ndarray, sigma: float, radius: float) -> np.ndarray:
    """(K, n) values of unnormalised Gaussians centred at `mu` (K,), zero beyond `radius`."""
    d = grid[None, :] - mu[:, None]
    values = np.exp(-(d ** 2) / (2.0 * sigma ** 2))
    return np.where(np.abs(d) <= radius, values, 0.0)
