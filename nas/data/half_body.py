"""Half-body augmentation (HRNet / SimpleBaseline's recipe): now and then train on a crop of the upper or
the lower body only, so the network learns to locate joints of people cut by the image or the box.

The dataset draws the randomness (from torch's RNG, so workers are seedable) and calls `half_body_crop`,
a pure function: the box of the chosen joints, grown to the input's aspect ratio, then enlarged by 1.5.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Upper-body joints: COCO's nose, eyes, ears, shoulders, elbows, wrists (0-10); MPII's thorax,
# upper_neck, head_top, wrists, elbows, shoulders (7-15). The others (hips, knees, ankles, pelvis) are lower.
COCO_UPPER_BODY: tuple[int, ...] = tuple(range(11))
MPII_UPPER_BODY: tuple[int, ...] = tuple(range(7, 16))
HALF_BODY_ENLARGE = 1.5
MIN_PART_JOINTS = 3  # a part is used only with more than 2 labelled joints (HRNet's rule)


def half_body_crop(keypoints: np.ndarray, upper_ids: Sequence[int], aspect_ratio: float,
                   prefer_upper: bool,
                   enlarge: float = HALF_BODY_ENLARGE) -> tuple[np.ndarray, np.ndarray] | None:
    """(center (2,), crop size (w, h) (2,)) framing the labelled joints of one half of the body.

    `keypoints` (K, 3) are [x, y, v] image pixels, labelled where v > 0. The upper body is used when
    `prefer_upper` and it has at least MIN_PART_JOINTS labelled joints; otherwise the lower body if it
    has that many, else the upper body. The centre is the mean of the chosen joints (as HRNet); the size
    is their bounding box, widened or heightened to `aspect_ratio` (W / H, never cut) and times `enlarge`.
    None when the chosen part has fewer than 2 labelled joints (no box to speak of).
    """
    labelled = keypoints[:, 2] > 0
    upper_mask = np.zeros(len(keypoints), dtype=bool)
    upper_mask[list(upper_ids)] = True
    upper = keypoints[labelled & upper_mask, :2]
    lower = keypoints[labelled & ~upper_mask, :2]
    if prefer_upper and len(upper) >= MIN_PART_JOINTS:
        chosen = upper
    else:
        chosen = lower if len(lower) >= MIN_PART_JOINTS else upper
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w, h], dtype=np.float64) * enlarge
    return center.astype(np.float32), scale.astype(np.float32)
