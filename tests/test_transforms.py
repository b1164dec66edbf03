"""Crop geometry and heatmap targets, checked against hand-worked values."""
from __future__ import annotations

import numpy as np
import pytest

from nas.data.keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS
from nas.data.transforms import (affine_points, box_to_center_scale, flip_keypoints,
                                 generate_heatmaps, get_affine_transform)


def test_box_to_center_scale_widens_a_tall_box():
    # box x=10, y=20, w=30, h=80; centre (25, 60); 30 < 0.75 * 80 = 60, so w becomes 60; then * 1.25
    center, scale = box_to_center_scale([10, 20, 30, 80], aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [25.0, 60.0])
    np.testing.assert_allclose(scale, [75.0, 100.0])


def test_box_to_center_scale_heightens_a_wide_box():
    # w=90 > 0.75 * 40 = 30, so h becomes 90 / 0.75 = 120; no padding
    center, scale = box_to_center_scale([0, 0, 90, 40], aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(center, [45.0, 20.0])
    np.testing.assert_allclose(scale, [90.0, 120.0])


def test_box_centre_maps_to_crop_centre_and_box_fills_crop():
    center, scale = np.array([300.0, 200.0]), np.array([96.0, 128.0])
    mat = get_affine_transform(center, scale, 0.0, (256, 192))
    # pixel-centre convention: the crop centre is ((W-1)/2, (H-1)/2); the box edges are the crop edges
    corners = np.array([[300.0, 200.0], [252.0, 136.0], [348.0, 264.0]])
    np.testing.assert_allclose(affine_points(corners, mat),
                               [[95.5, 127.5], [-0.5, -0.5], [191.5, 255.5]], atol=1e-9)


def test_rotation_turns_content_counter_clockwise():
    mat = get_affine_transform([50.0, 50.0], [100.0, 100.0], 90.0, (100, 100))
    # a point 10 px right of the centre appears 10 px above the crop centre (49.5, 49.5)
    np.testing.assert_allclose(affine_points([[60.0, 50.0]], mat), [[49.5, 39.5]], atol=1e-9)


@pytest.mark.parametrize("rot", [0.0, 30.0, -75.0])
def test_inverse_affine_returns_points(rot):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, size=(20, 2))
    center, scale = np.array([210.5, 180.0]), np.array([150.0, 200.0])
    forward = get_affine_transform(center, scale, rot, (256, 192))
    backward = get_affine_transform(center, scale, rot, (256, 192), inv=True)
    np.testing.assert_allclose(affine_points(affine_points(points, forward), backward), points,
                               atol=1e-9)


def test_flip_keypoints_mirrors_x_and_swaps_sides():
    keypoints = np.zeros((17, 3), dtype=np.float32)
    left_wrist, right_wrist = COCO_KEYPOINTS.index("left_wrist"), COCO_KEYPOINTS.index("right_wrist")
    keypoints[left_wrist] = [10.0, 40.0, 2.0]
    keypoints[0] = [30.0, 5.0, 1.0]
    flipped = flip_keypoints(keypoints, image_width=100, flip_pairs=COCO_FLIP_PAIRS)
    np.testing.assert_allclose(flipped[right_wrist], [89.0, 40.0, 2.0])  # 100 - 1 - 10
    np.testing.assert_allclose(flipped[left_wrist], [99.0, 0.0, 0.0])    # the empty right wrist
    np.testing.assert_allclose(flipped[0], [69.0, 5.0, 1.0])            # the nose stays the nose
    np.testing.assert_allclose(flip_keypoints(flipped, 100, COCO_FLIP_PAIRS), keypoints)


def test_heatmap_peak_on_a_pixel_centre():
    # input 256x192 -> heatmap 64x48 (stride 4): u = (x + 0.5) / 4 - 0.5, so x = 41.5 -> u = 10,
    # y = 81.5 -> v = 20
    keypoints = np.array([[41.5, 81.5, 2.0], [100.0, 100.0, 0.0]])
    target, weight = generate_heatmaps(keypoints, (256, 192), (64, 48), sigma=2.0)
    assert target.shape == (2, 64, 48) and target.dtype == np.float32
    assert weight.shape == (2, 1) and weight.dtype == np.float32
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (20, 10)
    assert target[0, 20, 10] == pytest.approx(1.0)
    assert target[0, 20, 12] == pytest.approx(np.exp(-4 / 8))  # two pixels away, sigma 2
    assert target[0, 20, 17] == 0.0                              # beyond 3 sigma
    assert weight[:, 0].tolist() == [1.0, 0.0]
    assert not target[1].any()


def test_heatmap_peak_of_a_sub_pixel_keypoint():
    # x = 101 -> u = 101.5 / 4 - 0.5 = 24.875 (nearest 25); y = 57 -> v = 13.875 (nearest 14)
    target, _ = generate_heatmaps(np.array([[101.0, 57.0, 1.0]]), (256, 192), (64, 48), sigma=2.0)
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (14, 25)
    assert target[0].max() == pytest.approx(np.exp(-2 * 0.125 ** 2 / 8))


def test_keypoint_outside_the_heatmap_gets_zero_weight():
    # u = -50.5 / 4 - 0.5 = -13.125, more than 3 sigma = 6 left of the map: nothing of it is drawn;
    # x = -20 -> u = -5.375 is within 6 of column 0, so it keeps weight 1
    keypoints = np.array([[-51.0, 100.0, 2.0], [-20.0, 100.0, 2.0], [100.0, 300.0, 2.0]])
    target, weight = generate_heatmaps(keypoints, (256, 192), (64, 48), sigma=2.0)
    assert weight[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert not target[0].any() and target[1, :, 0].max() > 0
