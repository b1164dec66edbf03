"""Heatmaps -> keypoint coordinates in the original image.

The inverse of the encoding in `nas.data.transforms`: argmax, a sub-pixel refinement, then the inverse of
the crop affine taken at the heatmap resolution. Two refinements (`decode_heatmaps(method=...)`):

- "quarter" (default, HRNet): a quarter-pixel step towards the higher neighbour, per axis. A keypoint on a
  heatmap pixel centre decodes back exactly; elsewhere the error is up to a quarter pixel.
- "dark" (DARK, Zhang et al. CVPR 2020): smooth the heatmap with a Gaussian of the training sigma, take
  its log and move the argmax by one Newton step, `-H^-1 g`, with the gradient and Hessian of the
  log-heatmap there. The log of a Gaussian is a quadratic, which the step solves exactly, so a Gaussian
  target at any sub-pixel position decodes back to it (up to the cut tails of the target and kernel).
- "soft_argmax" (beta-soft-argmax, as humanpose.pytorch decodes at test time): the expected pixel under
  softmax(beta * heatmap) over the map (beta = 160 by default), then the quarter-pixel step towards the
  higher neighbour of the rounded location (that code keeps HRNet's post-processing). Confidence is the
  heatmap at the rounded location. With heatmap values in [0, 1], beta = 160 makes the softmax nearly an
  argmax with sub-pixel interpolation between the top pixels; it does not learn anything (test only).
"""
from __future__ import annotations

import cv2
import numpy as np

DECODE_METHODS: tuple[str, ...] = ("quarter", "dark", "soft_argmax")
SOFT_ARGMAX_BETA = 160.0  # humanpose.pytorch's

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


def soft_argmax(heatmaps: np.ndarray, beta: float = SOFT_ARGMAX_BETA) -> tuple[np.ndarray, np.ndarray]:
    """Expected [x, y] (N, K, 2) under softmax(beta * heatmap) over each map, and maxvals (N, K, 1): the
    heatmap at the rounded expected location (a joint whose value there is not positive is not found)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    n, k, h, w = heatmaps.shape
    flat = beta * heatmaps.reshape(n, k, h * w)
    prob = np.exp(flat - flat.max(axis=2, keepdims=True))  # stable: the largest term is exp(0)
    prob /= prob.sum(axis=2, keepdims=True)
    xs, ys = np.arange(h * w) % w, np.arange(h * w) // w
    coords = np.stack([prob @ xs, prob @ ys], axis=-1)  # (N, K, 2)
    px = np.clip(np.round(coords[..., 0]).astype(int), 0, w - 1)
    py = np.clip(np.round(coords[..., 1]).astype(int), 0, h - 1)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    maxvals = heatmaps[ni, ki, py, px][..., None].astype(np.float32)
    return coords.astype(np.float32), maxvals


def refine_soft_argmax(heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The quarter-pixel step of the rounded soft-argmax location, added to the soft-argmax itself."""
    rounded = np.floor(coords + 0.5)
    return coords + (refine_quarter_offset(heatmaps, rounded) - rounded)


def smooth_heatmaps(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """Each (h, w) map blurred by a Gaussian of std `sigma` (kernel cut at 3 sigma), as DARK does.

    Borders are mirrored without repeating the edge pixel (cv2's default), so a peak near the edge is
    not pulled inward by zero padding.
    """
    n, k, h, w = heatmaps.shape
    size = 2 * int(np.ceil(3.0 * sigma)) + 1
    flat = np.ascontiguousarray(heatmaps.reshape(n * k, h, w), dtype=np.float32)
    out = np.empty_like(flat)
    for i, hm in enumerate(flat):
        out[i] = cv2.GaussianBlur(hm, (size, size), sigmaX=float(sigma), sigmaY=float(sigma))
    return out.reshape(n, k, h, w)


def refine_dark(heatmaps: np.ndarray, coords: np.ndarray, sigma: float = 2.0,
                max_step: float = 1.0) -> np.ndarray:
    """DARK's sub-pixel refinement of argmax `coords` (N, K, 2) [x, y] heatmap pixels.

    At the argmax of the smoothed log-heatmap L, with central differences
    g = (Lx, Ly), H = [[Lxx, Lxy], [Lxy, Lyy]], the peak of the quadratic through it is at `-H^-1 g`.
    A joint keeps the quarter-offset estimate where the step is not defined: its argmax on the border
    row/column, an empty map, a Hessian that is not negative definite (no maximum there), or a step
    longer than `max_step` pixels per axis (the argmax of a peaked map is within half a pixel of it).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    fallback = refine_quarter_offset(heatmaps, coords)
    if h < 3 or w < 3:
        return fallback
    log = np.log(np.maximum(smooth_heatmaps(heatmaps, sigma), 1e-10)).astype(np.float64)
    px = coords[..., 0].astype(int)
    py = coords[..., 1].astype(int)
    inside = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    px, py = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")

    def at(dx: int, dy: int) -> np.ndarray:
        return log[ni, ki, py + dy, px + dx]

    centre = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2.0 * centre + at(-1, 0)
    hyy = at(0, 1) - 2.0 * centre + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    maximum = (det > 1e-12) & (hxx < 0)
    safe = np.where(maximum, det, 1.0)
    step_x = -(hyy * gx - hxy * gy) / safe  # -H^-1 g, with H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
    step_y = -(hxx * gy - hxy * gx) / safe
    found = heatmaps[ni, ki, py, px] > 0
    ok = inside & maximum & found & (np.abs(step_x) <= max_step) & (np.abs(step_y) <= max_step)
    refined = fallback.copy()
    refined[..., 0] = np.where(ok, coords[..., 0] + step_x, fallback[..., 0])
    refined[..., 1] = np.where(ok, coords[..., 1] + step_y, fallback[..., 1])
    return refined


def heatmap_to_image(coords: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """Heatmap-pixel (K, 2) coords of one crop -> image coords (the crop's unrotated inverse affine)."""
    inv = get_affine_transform(center, scale, 0.0, heatmap_size, inv=True)
    return affine_points(coords, inv)


def decode_heatmaps(heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                    method: str = "quarter", sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) of crops given by centers/scales (N, 2) -> image preds (N, K, 2), maxvals.

    `method` is "quarter", "dark" or "soft_argmax" (module doc); `sigma` is DARK's smoothing,
    the heatmap sigma the network was trained with (the data config's `sigma`). Maxvals are those of
    the raw heatmaps (at the argmax; at the rounded soft-argmax). Test crops are never rotated, so the
    inverse affine has no rotation.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"decode method must be one of {', '.join(DECODE_METHODS)}, got {method!r}")
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    centers, scales = np.asarray(centers, np.float64), np.asarray(scales, np.float64)
    if method == "soft_argmax":
        coords, maxvals = soft_argmax(heatmaps)
        coords = refine_soft_argmax(heatmaps, coords)
    else:
        coords, maxvals = get_max_preds(heatmaps)
        refine = refine_dark(heatmaps, coords, sigma) if method == "dark" else None
        coords = refine if refine is not None else refine_quarter_offset(heatmaps, coords)
    size = heatmaps.shape[2:]
    preds = np.zeros(coords.shape, dtype=np.float64)  # (N, K, 2)
    for i, crop_coords in enumerate(coords):
        preds[i] = heatmap_to_image(crop_coords, centers[i], scales[i], size)
    return preds, maxvals
