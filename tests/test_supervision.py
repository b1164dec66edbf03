"""Multi-output supervision, OHKM, the lr schedules and pretrained loading, against hand-worked numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.engine.schedule import make_scheduler
from nas.pose.loss import (HeatmapOutput, KeypointMSELoss, MultiHeatmapLoss, distinct_sigmas, sigma_for_kernel,
                           supervised_loss)
from nas.pose.pretrained import load_pretrained


def _maps(values) -> torch.Tensor:
    """(B, K) values -> (B, K, 1, 1) one-pixel heatmaps."""
    return torch.tensor(values, dtype=torch.float32)[..., None, None]


def test_ohkm_keeps_the_hardest_keypoints_of_each_sample():
    """One-pixel maps, targets 0, weights 1: joint losses are 0.5 * pred^2.
    Sample 0: preds 1, 2, 3 -> 0.5, 2, 4.5; sample 1: preds 0, 4, 1 -> 0, 8, 0.5.
    Top-2 per sample: (4.5 + 2) / 2 = 3.25 and (8 + 0.5) / 2 = 4.25; mean 3.75.
    Without OHKM: the mean of all six, 15.5 / 6."""
    pred, target, weight = _maps([[1, 2, 3], [0, 4, 1]]), torch.zeros(2, 3, 1, 1), torch.ones(2, 3, 1)
    assert float(KeypointMSELoss(ohkm_topk=2)(pred, target, weight)) == pytest.approx(3.75)
    assert float(KeypointMSELoss()(pred, target, weight)) == pytest.approx(15.5 / 6)
    # a zero-weight joint is not hard: sample 0's joint 3 (weight 0) leaves 2 and 0.5 -> 1.25; sample 1 stays 4.25
    weight[0, 2] = 0
    assert float(KeypointMSELoss(ohkm_topk=2)(pred, target, weight)) == pytest.approx((1.25 + 4.25) / 2)


def test_multi_output_loss_weights_each_output_against_the_target_of_its_sigma():
    """Two outputs: the coarse one (sigma 2.6, weight 0.25) against target 0 of `targets`, the final one
    (sigma 1.4, weight 1, OHKM top-1) against target 1. With one-pixel maps:
    coarse: preds 2, 0 vs targets 1, 1 -> 0.5 * (1 + 1) / 2 = 0.5, x 0.25 = 0.125;
    final: preds 3, 1 vs targets 1, 0 -> joint losses 2, 0.5, top-1 = 2; total 2.125."""
    outputs = [HeatmapOutput(2.6, 0.25), HeatmapOutput(1.4, 1.0, ohkm_topk=1)]
    sigmas = distinct_sigmas(outputs)
    assert sigmas == [2.6, 1.4]
    targets = torch.stack([_maps([[1, 1]]), _maps([[1, 0]])], dim=1)  # (B=1, S=2, K=2, 1, 1)
    loss = MultiHeatmapLoss(outputs, sigmas)([_maps([[2, 0]]), _maps([[3, 1]])], targets, torch.ones(1, 2, 1))
    assert float(loss) == pytest.approx(2.125)
    batch = {"targets": targets, "target_weight": torch.ones(1, 2, 1), "target": targets[:, 1]}
    # a plain criterion (a strategy searching a multi-output family) supervises the final output only:
    # preds 3, 1 vs 1, 0 -> (2 + 0.5) / 2
    assert float(supervised_loss(KeypointMSELoss(), [_maps([[2, 0]]), _maps([[3, 1]])], batch)) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="returned 1 heatmap sets"):
        MultiHeatmapLoss(outputs, sigmas)([_maps([[2, 0]])], targets, torch.ones(1, 2, 1))


def test_opencv_kernel_sigmas():
    """OpenCV's documented rule for sigma=0: 0.3 * ((k - 1) * 0.5 - 1) + 0.8."""
    assert [round(sigma_for_kernel(k), 2) for k in (15, 11, 9, 7, 5)] == [2.6, 2.0, 1.7, 1.4, 1.1]
    with pytest.raises(ValueError):
        sigma_for_kernel(4)


def test_the_data_makes_one_gaussian_target_per_sigma(tmp_path):
    """For a Gaussian target t = exp(-d^2 / (2 s^2)), log t1 / log t2 = s2^2 / s1^2 at every pixel both
    cover: the targets of sigma 1 and 2 at the same keypoint obey it."""
    from nas.data.build import synthetic_data
    from nas.data.topdown import set_target_sigmas
    data = synthetic_data(num_train=4, num_val=2, image_size=(128, 128), max_people=1, cache_dir=str(tmp_path),
                          splits=("val",))
    set_target_sigmas(data.val, [1.0, 2.0])
    item = data.val[0]
    t1, t2 = item["targets"][0].numpy(), item["targets"][1].numpy()
    assert item["targets"].shape[0] == 2 and t1.shape == item["target"].shape
    both = (t1 > 1e-3) & (t2 > 1e-3) & (t1 < 0.999)
    assert both.sum() > 10
    assert np.allclose(np.log(t1[both]) / np.log(t2[both]), 4.0, rtol=1e-3)


def test_multistep_schedule_with_warmup():
    """lr 1, 2 steps per epoch, drops x0.1 at epochs 2 and 3, warm-up over 2 steps from 0.1:
    step 0: 0.1; step 1: 0.1 + 0.9 / 2 = 0.55; steps 2-3: 1; epoch 2 (steps 4-5): 0.1; epoch 3: 0.01."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, "multistep", epochs=4, steps_per_epoch=2, steps=[2, 3], factor=0.1,
                           warmup_iters=2, warmup_ratio=0.1)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.55, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_with_warmup_reaches_lr_min_at_the_end():
    """Cosine from 1 to 0.1 over 10 steps, warm-up 4 steps from 0: at step 5 the cosine is at
    0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55; at step 2 the warm-up halves 0.1 + 0.9 * 0.5 * (1 + cos(0.2 pi))."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, "cosine", epochs=1, steps_per_epoch=10, lr_min=0.1, warmup_iters=4, warmup_ratio=0.0)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[5] == pytest.approx(0.55)
    assert lrs[2] == pytest.approx(0.5 * (0.1 + 0.45 * (1 + math.cos(0.2 * math.pi))))
    assert lrs[10] == pytest.approx(0.1)
    with pytest.raises(UserError, match="is not a schedule"):
        make_scheduler(opt, "poly", epochs=1, steps_per_epoch=1)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)


def test_pretrained_loading_reports_what_fitted(tmp_path):
    """A file with the backbone's conv (a DataParallel 'module.' prefix, inside 'state_dict'), its BN
    weight of a wrong shape, and a classifier: 1 loaded, 1 mismatched, 1 unused; the rest missing."""
    net = _Net()
    conv = torch.full((4, 3, 3, 3), 0.5)
    torch.save({"state_dict": {"module.0.weight": conv, "module.1.weight": torch.ones(7),
                               "module.fc.weight": torch.ones(10, 4)}}, tmp_path / "w.pth")
    report = load_pretrained(net.backbone, tmp_path / "w.pth")
    assert torch.equal(net.backbone[0].weight, conv)
    assert report["loaded"] == ["0.weight"] and len(report["mismatched"]) == 1 and report["unused"] == ["fc.weight"]
    assert set(report["missing"]) == {"0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    # a file whose only fitting tensors are BatchNorm step counters (0-d, they fit any BN): nothing fits
    torch.save({"1.num_batches_tracked": torch.tensor(5), "0.weight": torch.ones(8, 3, 3, 3)}, tmp_path / "bn.pth")
    with pytest.raises(UserError, match="no tensor of .* fits the backbone"):
        load_pretrained(net.backbone, tmp_path / "bn.pth")
    # a rename that maps nothing: refused, not a silent training from scratch
    with pytest.raises(UserError, match="no tensor of .* fits the backbone"):
        load_pretrained(net.backbone, tmp_path / "w.pth", rename=lambda k: None)
    with pytest.raises(UserError, match="pretrained weights not found"):
        load_pretrained(net.backbone, tmp_path / "absent.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read pretrained weights"):
        load_pretrained(net.backbone, tmp_path / "bad.pth")


def test_supervision_config_is_checked_against_the_network():
    """supervision= must give one {sigma, weight, ohkm_topk} per output: a count that differs from the
    network's outputs, an unknown key or a missing sigma is a one-line UserError."""
    from nas.retrain import _supervision

    class TwoOutputs(nn.Module):
        def heatmap_outputs(self):
            return [HeatmapOutput(2.0, 0.5), HeatmapOutput(1.0, 1.0, 8)]

    assert _supervision(None, TwoOutputs()) == TwoOutputs().heatmap_outputs()  # the network's own
    assert _supervision(None, nn.Conv2d(1, 1, 1)) is None  # a plain network keeps the plain loss
    given = [{"sigma": 3.0}, {"sigma": 1.5, "weight": 2, "ohkm_topk": 4}]
    assert _supervision(given, TwoOutputs()) == [HeatmapOutput(3.0, 1.0, None), HeatmapOutput(1.5, 2.0, 4)]
    with pytest.raises(UserError, match="lists 1 output.* returns 2"):
        _supervision([{"sigma": 2.0}], TwoOutputs())
    with pytest.raises(UserError, match=r"supervision\[0\] must be"):
        _supervision([{"sigma": 2.0, "kernel": 9}], nn.Conv2d(1, 1, 1))
    with pytest.raises(UserError, match=r"supervision\[0\] must be"):
        _supervision([{"weight": 2.0}], nn.Conv2d(1, 1, 1))
