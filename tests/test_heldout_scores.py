"""The held-out estimator's continuous score (neg_heatmap_loss) beside AP, and evolution keeping it."""
from __future__ import annotations

import torch
from torch import nn

from estimators.accuracy import HeldOutPoseAccuracy
from nas.data.build import synthetic_data


class _Fixed(nn.Module):
    """Returns the heatmaps it is given per call, in order (a stand-in network)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.calls = list(outputs), 0

    def forward(self, x):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def test_neg_heatmap_loss_is_minus_the_target_weighted_mse_on_the_scored_crops(tmp_path):
    data = synthetic_data(input_size=(64, 48), heatmap_size=(16, 12), sigma=1.0, num_train=6, num_val=2,
                          image_size=(128, 128), max_people=2, cache_dir=str(tmp_path))
    est = HeldOutPoseAccuracy(data.train, torch.device("cpu"), data.flip_pairs, max_images=None, batch_size=4)
    batches = list(est.loader)
    targets = [b["target"] * b["target_weight"].unsqueeze(-1) for b in batches]
    # a network that predicts the (weighted) targets exactly: loss 0
    assert est.heatmap_loss(_Fixed(targets)) == 0.0
    # one that predicts zeros: per batch 0.5 * mean((w * t)^2), averaged over samples (batch-size weighted)
    zeros = [torch.zeros_like(t) for t in targets]
    by_hand = sum(0.5 * float((t ** 2).mean()) * len(t) for t in targets) / sum(len(t) for t in targets)
    assert abs(est.heatmap_loss(_Fixed(zeros)) - by_hand) < 1e-9 and by_hand > 0
    scores = est(_Fixed(zeros))
    assert abs(scores["neg_heatmap_loss"] + by_hand) < 1e-9 and "AP" in scores
