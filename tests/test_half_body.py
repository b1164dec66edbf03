"""Half-body augmentation: the crop of a known pose, worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.data.coco import CocoTopDown
from nas.data.half_body import COCO_UPPER_BODY, MPII_UPPER_BODY, half_body_crop
from tests.test_bad_input import write_coco

ASPECT = 192 / 256  # input W / H = 0.75


def _pose() -> np.ndarray:
    """17 labelled COCO joints. Upper (0-10): (100, 50), (140, 110) and nine at (120, 80):
    mean (1320 / 11, 880 / 11) = (120, 80), box 40 x 60. Lower (11-16): (110, 200), (130, 260) and four
    at (120, 230): mean (720 / 6, 1380 / 6) = (120, 230), box 20 x 60."""
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[:, 2] = 2
    kp[0, :2], kp[1, :2], kp[2:11, :2] = (100, 50), (140, 110), (120, 80)
    kp[11, :2], kp[12, :2], kp[13:, :2] = (110, 200), (130, 260), (120, 230)
    return kp


def test_upper_body_box_grown_to_aspect_and_enlarged():
    # 40 x 60 box: 40 < 0.75 * 60 = 45, so w = 45; x 1.5 -> (67.5, 90)
    center, scale = half_body_crop(_pose(), COCO_UPPER_BODY, ASPECT, prefer_upper=True)
    np.testing.assert_allclose(center, [120.0, 80.0], atol=1e-4)
    np.testing.assert_allclose(scale, [67.5, 90.0], atol=1e-4)


def test_lower_body_when_not_preferring_upper():
    # 20 x 60 box -> w = 45 -> (67.5, 90) around (120, 230)
    center, scale = half_body_crop(_pose(), COCO_UPPER_BODY, ASPECT, prefer_upper=False)
    np.testing.assert_allclose(center, [120.0, 230.0], atol=1e-4)
    np.testing.assert_allclose(scale, [67.5, 90.0], atol=1e-4)


def test_wide_box_gets_taller_and_unlabelled_joints_are_ignored():
    kp = _pose()
    kp[1, :2] = (220, 60)       # upper box now x 100..220, y 50..80: 120 x 30; 120 > 0.75 * 30
    kp[2:11, :2] = (160, 80)    # mean x (100 + 220 + 9 * 160) / 11 = 160, y (50 + 60 + 720) / 11
    kp[3, :2], kp[3, 2] = (1000, 1000), 0  # unlabelled: not in the box nor the mean
    # upper now 10 labelled joints: x (100 + 220 + 8 * 160) / 10 = 160, y (50 + 60 + 8 * 80) / 10 = 75
    center, scale = half_body_crop(kp, COCO_UPPER_BODY, ASPECT, prefer_upper=True)
    np.testing.assert_allclose(center, [160.0, 75.0], atol=1e-4)
    np.testing.assert_allclose(scale, [120 * 1.5, 120 / 0.75 * 1.5], atol=1e-3)  # h = w / aspect = 160


def test_too_few_upper_joints_falls_back_to_lower():
    kp = _pose()
    kp[2:11, 2] = 0  # only joints 0 and 1 of the upper body labelled: fewer than 3
    center, _ = half_body_crop(kp, COCO_UPPER_BODY, ASPECT, prefer_upper=True)
    np.testing.assert_allclose(center, [120.0, 230.0], atol=1e-4)


def test_nothing_to_frame_gives_none():
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[0] = (10, 10, 2)
    assert half_body_crop(kp, COCO_UPPER_BODY, ASPECT, prefer_upper=True) is None


def test_mpii_upper_body_is_head_torso_and_arms():
    # MPII: 0-5 legs, 6 pelvis are lower; 7 thorax, 8 neck, 9 head top, 10-15 arms are upper
    assert set(MPII_UPPER_BODY) == {7, 8, 9, 10, 11, 12, 13, 14, 15}
    assert set(COCO_UPPER_BODY) == set(range(11))


def _dataset(tmp_path, labelled: int, prob: float) -> CocoTopDown:
    """One person, `labelled` joints labelled, in a 100 x 80 image; the other augmentations off.
    The pose is _pose() x 0.25 + 5: upper mean (35, 25), lower (35, 62.5), both boxes 10 x 15 ->
    w = 0.75 * 15 = 11.25 -> crop (16.875, 22.5)."""
    kp = _pose()
    kp[:, :2] = kp[:, :2] * 0.25 + 5
    kp[labelled:, 2] = 0
    root = write_coco(tmp_path, [kp], corrupt=())
    return CocoTopDown(root, "train2017", input_size=(256, 192), heatmap_size=(64, 48), train=True,
                       scale_factor=0.0, rot_prob=0.0, flip_prob=0.0, half_body_prob=prob)


@pytest.mark.parametrize("labelled,prob", [(8, 1.0), (17, 0.0)])
def test_dataset_keeps_the_box_crop_at_8_joints_or_probability_0(tmp_path, labelled, prob):
    ds = _dataset(tmp_path, labelled, prob)
    torch.manual_seed(0)
    for _ in range(5):
        meta = ds[0]["meta"]
        np.testing.assert_allclose(meta["center"], ds.samples[0].center)
        np.testing.assert_allclose(meta["scale"], ds.samples[0].scale)


def test_dataset_crops_upper_or_lower_body_at_random(tmp_path):
    ds = _dataset(tmp_path, 17, 1.0)
    torch.manual_seed(0)
    metas = [ds[0]["meta"] for _ in range(20)]
    centers = {tuple(np.round(m["center"], 3).tolist()) for m in metas}
    assert centers == {(35.0, 25.0), (35.0, 62.5)}  # both halves drawn in 20 tries
    for meta in metas:
        np.testing.assert_allclose(meta["scale"], [16.875, 22.5], atol=1e-4)
