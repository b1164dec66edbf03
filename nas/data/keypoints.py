"""The COCO person-keypoint definition shared by every dataset that uses the 17 COCO joints."""
from __future__ import annotations

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# Index pairs swapped by a horizontal flip (left <-> right).
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

# Per-keypoint OKS constants (the `sigmas` of pycocotools' COCOeval, in the same order).
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)

# 1-based limb list as stored in the COCO `categories[0]["skeleton"]` field.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
    (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

NUM_COCO_KEYPOINTS = len(COCO_KEYPOINTS)


def flip_permutation(flip_pairs: tuple[tuple[int, int], ...], num_keypoints: int) -> list[int]:
    """Index list `p` such that `flipped[:, p]` puts every joint in its mirrored slot."""
    perm = list(range(num_keypoints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def coco_category() -> dict:
    """The `categories` entry of a COCO person-keypoints annotation file."""
    return {
        "id": 1, "name": "person", "supercategory": "person",
        "keypoints": list(COCO_KEYPOINTS), "skeleton": [list(s) for s in COCO_SKELETON],
    }
