"""Backgrounds, clutter and occluding objects for the synthetic keypoint datasets.

Backgrounds mix a colour gradient, low-frequency blotches, sometimes stripes, pixel noise and clutter
shapes (boxes, ellipses, lines). Clutter and occluders use `neutral_color`, never the strong
red-orange or blue that mark a person's left and right limbs, so they distract without impersonating.
"""
from __future__ import annotations

import cv2
import numpy as np

from nas.data.synthetic.person import SHIFT, fixed_point, hsv_bgr, neutral_color


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 linear blend between two muted colours along a random direction."""
    c0, c1 = (np.array(hsv_bgr(rng.uniform(0, 360), rng.uniform(0, 0.5), rng.uniform(0.2, 0.9)),
                       dtype=np.float32) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c0 + t[..., None] * (c1 - c0)


def _blotches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 smooth random colour variation (a coarse noise grid, upsampled)."""
    gh, gw = rng.integers(2, 9, size=2)
    grid = rng.normal(0.0, rng.uniform(5.0, 22.0), size=(gh, gw, 3)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 1) float32 brightness stripes of random period and direction (a texture)."""
    angle, period = rng.uniform(0, np.pi), rng.uniform(6.0, 40.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period)
    return (rng.uniform(5.0, 20.0) * np.sin(phase))[..., None]


def _clutter_shape(rng: np.random.Generator, image: np.ndarray) -> None:
    """One random box, ellipse or line in a neutral colour, filled or outlined."""
    h, w = image.shape[:2]
    center = rng.uniform((0, 0), (w, h))
    half = rng.uniform(0.03, 0.25, size=2) * (w, h)
    color = neutral_color(rng)
    thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
    kind = rng.integers(0, 3)
    p0, p1 = fixed_point(center - half), fixed_point(center + half)
    if kind == 0:
        cv2.rectangle(image, p0, p1, color, thickness, cv2.LINE_AA, SHIFT)
    elif kind == 1:
        axes, angle = fixed_point(half), float(rng.uniform(0, 180))
        cv2.ellipse(image, fixed_point(center), axes, angle, 0, 360, color, thickness, cv2.LINE_AA, SHIFT)
    else:
        end = fixed_point(center + rng.uniform(-1, 1, size=2) * half * 2)
        width = int(rng.integers(1, 7))
        cv2.line(image, fixed_point(center), end, color, width, cv2.LINE_AA, SHIFT)


def draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (height, width, 3) BGR uint8 background: gradient, blotches, maybe stripes, noise, clutter."""
    image = _gradient(rng, height, width) + _blotches(rng, height, width)
    if rng.random() < 0.35:
        image += _stripes(rng, height, width)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    image += noise * np.float32(rng.uniform(1.0, 6.0))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 12))):
        _clutter_shape(rng, image)
    return image


def _occluder_polygon(rng: np.random.Generator, center: np.ndarray, size: float) -> np.ndarray:
    """Corners (N, 2) of a rotated box, a thin post or an ellipse of about `size` px across."""
    kind = rng.integers(0, 3)
    angle = rng.uniform(0, 180)
    if kind == 2:
        axes = (size * rng.uniform(0.3, 0.6), size * rng.uniform(0.3, 0.6))
        return cv2.ellipse2Poly((0, 0), (int(axes[0] * 16), int(axes[1] * 16)), int(angle), 0, 360,
                                10).astype(np.float64) / 16 + center
    half = (size * rng.uniform(0.3, 0.6), size * rng.uniform(0.3, 0.6))
    if kind == 1:                              # a post: long and thin
        half = (size * rng.uniform(0.08, 0.18), size * rng.uniform(0.8, 1.5))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return corners @ rot.T + center


def sample_occluder(rng: np.random.Generator, center: np.ndarray,
                    size: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The corners (N, 2) and neutral colour of an object of about `size` px across around `center`."""
    return _occluder_polygon(rng, center, size), neutral_color(rng)


def paint_occluder(image: np.ndarray, owner: np.ndarray, corners: np.ndarray, color: tuple[int, int, int],
                   owner_value: int) -> None:
    """Paint the object with `corners` (N, 2) into `image` and mark its pixels `owner_value` in `owner`."""
    pts = np.array([fixed_point(p) for p in corners], dtype=np.int32)[None]
    cv2.fillPoly(image, pts, color, cv2.LINE_AA, SHIFT)
    edge = tuple(int(c * 0.6) for c in color)
    cv2.polylines(image, pts, True, edge, 1, cv2.LINE_AA, SHIFT)
    cv2.fillPoly(owner, pts, owner_value, cv2.LINE_8, SHIFT)


def draw_occluder(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray,
                  center: np.ndarray, size: float, owner_value: int) -> None:
    """Paint an object around `center` into `image` and mark its pixels `owner_value` in `owner`."""
    corners, color = sample_occluder(rng, center, size)
    paint_occluder(image, owner, corners, color, owner_value)
