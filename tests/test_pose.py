"""Pose parts shared by all spaces: head, loss, decoding, flip test, COCO result entries."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nas.data.keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS
from nas.data.transforms import affine_points, generate_heatmaps, get_affine_transform
from nas.pose.decode import decode_heatmaps, get_max_preds
from nas.pose.flip import flip_heatmaps_back, flip_test
from nas.pose.head import HeatmapHead
from nas.pose.loss import KeypointMSELoss
from nas.pose.predict import predict_coco, results_from_heatmaps

INPUT, HEATMAP = (256, 192), (64, 48)
# A crop whose heatmap pixel is exactly 2x2 image pixels: scale (96, 128) over a 48x64 heatmap.
CENTER, SCALE = np.array([100.0, 200.0]), np.array([96.0, 128.0])


def test_head_and_loss_smoke():
    head = HeatmapHead(in_channels=32, num_keypoints=17, num_deconv=2, deconv_channels=16)
    features = torch.randn(2, 32, 16, 12)
    heatmaps = head(features)
    assert heatmaps.shape == (2, 17, 64, 48)
    assert head.final.weight.std().item() < 0.01 and not head.final.bias.any()
    loss = KeypointMSELoss()(heatmaps, torch.rand(2, 17, 64, 48), torch.ones(2, 17, 1))
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0 and head.final.weight.grad is not None
    assert HeatmapHead(48, 17, final_kernel=3)(torch.randn(1, 48, 64, 48)).shape == (1, 17, 64, 48)


def test_loss_zero_for_identical_inputs_and_ignores_weight_zero_joints():
    loss = KeypointMSELoss(use_target_weight=True)
    target = torch.rand(2, 3, 8, 6)
    weight = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1).expand(2, 3, 1)
    assert loss(target, target, weight).item() == 0.0
    pred = target.clone()
    pred[:, 1] += 5.0  # only the weight-0 joint is wrong
    assert loss(pred, target, weight).item() == 0.0
    pred[:, 0] += 1.0  # joint 0 off by 1 everywhere: 0.5 * mean over 3 joints of (1, 0, 0) = 1/6
    assert loss(pred, target, weight).item() == pytest.approx(1.0 / 6.0)
    assert KeypointMSELoss(use_target_weight=False)(pred, target, weight).item() > 1.0


def test_get_max_preds_finds_peaks_and_zeroes_empty_maps():
    heatmaps = np.zeros((1, 2, 5, 7), dtype=np.float32)
    heatmaps[0, 0, 3, 4] = 0.8  # row 3, column 4 -> [x, y] = [4, 3]
    heatmaps[0, 1] = -1.0
    heatmaps[0, 1, 2, 5] = -0.5  # the maximum is not positive: not found, coords (0, 0)
    coords, maxvals = get_max_preds(heatmaps)
    np.testing.assert_array_equal(coords[0], [[4.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(maxvals[0, :, 0], [0.8, -0.5])


def test_decode_quarter_offset_towards_higher_neighbour():
    heatmaps = np.zeros((1, 1, 64, 48), dtype=np.float32)
    heatmaps[0, 0, 5, 10] = 1.0   # peak at x=10, y=5
    heatmaps[0, 0, 5, 11] = 0.6   # right neighbour higher than the left (0): x + 0.25
    heatmaps[0, 0, 4, 10] = 0.3   # upper neighbour higher than the lower (0): y - 0.25
    preds, maxvals = decode_heatmaps(heatmaps, CENTER[None], SCALE[None])
    # heatmap (10.25, 4.75) -> image x = (10.25 + 0.5) * 96 / 48 + 100 - 48 = 73.5,
    #                          y = (4.75 + 0.5) * 128 / 64 + 200 - 64 = 146.5
    np.testing.assert_allclose(preds[0, 0], [73.5, 146.5], atol=1e-6)
    assert maxvals[0, 0, 0] == pytest.approx(1.0)


def test_encode_decode_is_exact_on_a_heatmap_pixel_centre():
    # image (73, 177) -> crop x = (73 - 100) * 2 + 95.5 = 41.5, y = (177 - 200) * 2 + 127.5 = 81.5
    #                 -> heatmap (10, 20): a pixel centre, symmetric neighbours, no offset
    mat = get_affine_transform(CENTER, SCALE, 0.0, INPUT)
    keypoint = np.array([[73.0, 177.0]])
    in_crop = affine_points(keypoint, mat)
    np.testing.assert_allclose(in_crop, [[41.5, 81.5]])
    target, _ = generate_heatmaps(np.c_[in_crop, [2.0]], INPUT, HEATMAP, sigma=2.0)
    preds, _ = decode_heatmaps(target[None], CENTER[None], SCALE[None])
    np.testing.assert_allclose(preds[0], keypoint, atol=1e-4)


@pytest.mark.parametrize("xy", [(73.3, 151.9), (120.8, 233.1), (61.0, 160.6)])
def test_encode_decode_within_a_quarter_heatmap_pixel(xy):
    center, scale = np.array([95.0, 190.0]), np.array([150.0, 200.0])
    mat = get_affine_transform(center, scale, 0.0, INPUT)
    in_crop = affine_points(np.array([xy]), mat)
    target, weight = generate_heatmaps(np.c_[in_crop, [1.0]], INPUT, HEATMAP, sigma=2.0)
    preds, _ = decode_heatmaps(target[None], center[None], scale[None])
    # argmax is within half a heatmap pixel; the quarter step halves that: <= 0.25 px per axis
    tolerance = 0.25 * scale / np.array([HEATMAP[1], HEATMAP[0]]) + 1e-4
    assert weight[0, 0] == 1.0
    assert np.all(np.abs(preds[0, 0] - xy) <= tolerance)


def test_flip_heatmaps_back_swaps_pairs_and_is_an_involution():
    heatmaps = torch.rand(2, 17, 8, 6)
    back = flip_heatmaps_back(flip_heatmaps_back(heatmaps, COCO_FLIP_PAIRS), COCO_FLIP_PAIRS)
    assert torch.equal(back, heatmaps)
    once = flip_heatmaps_back(heatmaps, COCO_FLIP_PAIRS)
    left, right = COCO_KEYPOINTS.index("left_knee"), COCO_KEYPOINTS.index("right_knee")
    assert torch.equal(once[:, left], heatmaps[:, right].flip(-1))
    assert torch.equal(once[:, 0], heatmaps[:, 0].flip(-1))  # the nose has no partner


class DotFinder(nn.Module):
    """A perfect one-joint 'pose model': the target heatmap of the brightest pixel of channel 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images:
            y, x = divmod(int(image[0].argmax()), image.shape[-1])
            target, _ = generate_heatmaps(np.array([[x, y, 1.0]]), INPUT, HEATMAP, sigma=2.0)
            out.append(torch.from_numpy(target))
        return torch.stack(out)  # (B, 1, h, w)


def test_flip_test_of_a_perfect_model_matches_the_model():
    images = torch.zeros(2, 3, *INPUT)
    images[0, 0, 81, 37] = 1.0
    images[1, 0, 200, 150] = 1.0
    model = DotFinder()
    direct = model(images)
    np.testing.assert_allclose(flip_test(model, images, ()).numpy(), direct.numpy(), atol=1e-6)
    # HRNet's one-pixel shift would be wrong with this (mirror-exact) encoding
    assert not torch.allclose(flip_test(model, images, (), shift=True), direct, atol=1e-3)


def test_predict_coco_decodes_the_dot():
    images = torch.zeros(1, 3, *INPUT)
    images[0, 0, 81, 41] = 1.0  # crop (41, 81) -> heatmap (9.875, 19.875)
    meta = {"image_id": torch.tensor([7]), "center": torch.tensor(CENTER[None], dtype=torch.float32),
            "scale": torch.tensor(SCALE[None], dtype=torch.float32), "score": torch.tensor([0.5])}
    model = DotFinder().train()
    results = predict_coco(model, [{"image": images, "meta": meta}], "cpu", (), flip=True)
    assert model.training  # mode restored
    assert len(results) == 1 and results[0]["image_id"] == 7 and results[0]["category_id"] == 1
    x, y, conf = results[0]["keypoints"]
    # crop 41 -> image (41 - 95.5) / 2 + 100 = 72.75; crop 81 -> (81 - 127.5) / 2 + 200 = 176.75;
    # decoding is within a quarter heatmap pixel = 0.5 image pixels
    assert abs(x - 72.75) <= 0.5 and abs(y - 176.75) <= 0.5
    assert results[0]["score"] == pytest.approx(0.5 * conf)


def test_results_from_heatmaps_scores():
    heatmaps = np.zeros((2, 3, 64, 48), dtype=np.float32)
    heatmaps[0, :, 10, 10] = [0.9, 0.5, 0.1]  # joints above 0.2: mean(0.9, 0.5) = 0.7
    heatmaps[1, :, 10, 10] = 0.1               # none above 0.2: keypoint factor 0 (HRNet, MMPose)
    meta = {"image_id": [1, 2], "center": np.stack([CENTER, CENTER]),
            "scale": np.stack([SCALE, SCALE]), "score": [0.8, 0.6]}
    results = results_from_heatmaps(heatmaps, meta)
    assert [r["image_id"] for r in results] == [1, 2]
    assert len(results[0]["keypoints"]) == 9
    assert results[0]["score"] == pytest.approx(0.8 * 0.7)
    assert results[1]["score"] == 0.0  # not the box score 0.6: HRNet/MMPose give such a pose 0
