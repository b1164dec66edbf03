"""Online evaluation over videos (nas.pose.online): the crop of each frame comes from the previous prediction
(or the ground truth), predictions on labelled frames are scored, steps are timed per cycle position.

Fixture (tests/test_video_clips.py's writer): one val video of 5 frames, frame 3 unlabelled; one track walking
right, cx = 20.5 + 2t, cy = 24.5. The oracle stepper knows the track's joints per frame and draws Gaussian
heatmaps where the crop's affine puts them, so a perfect pose estimator is scored."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.data.posetrack import read_split
from nas.pose.online import ImageStepper, run_online
from tests.test_video_clips import _keypoints, _write_video

INPUT, HEATMAP = (40, 30), (20, 15)
FRAMES = 5


class Oracle:
    """Draws the ground-truth joints of frame t (t counted from reset) into heatmaps of the crop it is given;
    records the affines it received."""

    def __init__(self):
        self.affines, self.t, self.resets = [], 0, 0

    def reset(self):
        self.t, self.resets = 0, self.resets + 1

    def step(self, image, affine):
        joints = np.reshape(_keypoints(20.5 + 2 * self.t, 24.5), (-1, 3))
        a = affine[0].double().numpy()
        self.affines.append(a)
        heat = torch.zeros(1, 17, *HEATMAP)
        v, u = torch.meshgrid(torch.arange(HEATMAP[0]).double(), torch.arange(HEATMAP[1]).double(), indexing="ij")
        for k, (x, y, vis) in enumerate(joints):
            if vis > 0:
                xi, yi = a @ np.array([x, y, 1.0])  # input pixels; heatmap = (input + 0.5) / 2 - 0.5
                hu, hv = (xi + 0.5) / 2 - 0.5, (yi + 0.5) / 2 - 0.5
                heat[0, k] = torch.exp(-((u - hu) ** 2 + (v - hv) ** 2) / 2).float()
        self.t += 1
        return heat


@pytest.fixture
def videos(tmp_path):
    people = {t: [(0, 20.5 + 2 * t, 24.5)] for t in range(FRAMES)}
    _write_video(tmp_path, "val", "000001_bonn", 1, [True, True, True, False, True], people)
    return read_split(tmp_path, "val")


@pytest.mark.parametrize("boxes", ["online", "gt"])
def test_a_perfect_estimator_scores_ap_1_on_the_labelled_frames(videos, boxes):
    out = run_online(Oracle(), videos, INPUT, boxes=boxes, decode="quarter", sigma=1.0)
    assert out.metrics["AP"] == pytest.approx(1.0)
    assert out.frames == FRAMES and len(out.results) == 4  # frame 3 is unlabelled: run, not scored
    assert {r["image_id"] for r in out.results} == {10000000000 + 10000 + t for t in (0, 1, 2, 4)}


def test_online_crops_follow_the_previous_prediction(videos):
    """Frame 0: the ground-truth box [cx - 12, cy - 16, 24, 32] (aspect 30/40 already) x 1.25 -> a 30 x 40
    crop centred on (20.5, 24.5). Frame t > 0: the box around frame t-1's joints, which span x -4..6 and
    y -15..13 around (cx, cy): centre (cx + 1, cy - 1), size 10 x 28 -> 21 x 28 at aspect 0.75 -> x 1.25:
    26.25 x 35. The crop centre maps to input pixel (14.5, 19.5), and the scale is 30 / 26.25 per pixel."""
    oracle = Oracle()
    run_online(oracle, videos, INPUT, boxes="online", decode="dark", sigma=1.0)  # DARK: within ~0.1 px
    first = oracle.affines[0]
    assert first @ np.array([20.5, 24.5, 1.0]) == pytest.approx([14.5, 19.5])
    assert first[0, 0] == pytest.approx(1.0)
    for t in range(1, FRAMES):
        centre = np.array([20.5 + 2 * (t - 1) + 1, 24.5 - 1, 1.0])
        assert oracle.affines[t] @ centre == pytest.approx([14.5, 19.5], abs=0.15)
        assert oracle.affines[t][0, 0] == pytest.approx(30 / 26.25, rel=0.03)  # GT box: 1.0; no padding: 1.43


def test_gt_boxes_are_used_where_the_frame_has_one(videos):
    oracle = Oracle()
    run_online(oracle, videos, INPUT, boxes="gt", decode="dark", sigma=1.0)
    for t in (0, 1, 2, 4):  # labelled frames carry the box; frame 3 has none: the previous prediction's
        assert oracle.affines[t] @ np.array([20.5 + 2 * t, 24.5, 1.0]) == pytest.approx([14.5, 19.5])
    assert oracle.affines[3] @ np.array([20.5 + 2 * 2 + 1, 23.5, 1.0]) == pytest.approx([14.5, 19.5], abs=0.15)


def test_a_wrong_estimator_scores_low_and_latency_is_kept_per_cycle_position(videos):
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 17, *HEATMAP)
    out = run_online(ImageStepper(Constant()), videos, INPUT, boxes="online", cycle=2)
    assert out.metrics["AP"] < 0.1
    assert sorted(out.latency_ms) == [0, 1] and out.mean_latency_ms > 0
    with pytest.raises(ValueError, match="boxes"):
        run_online(Oracle(), videos, INPUT, boxes="detector")
