"""The heatmap regression loss with per-joint target weights."""
from __future__ import annotations

import torch
from torch import nn


class KeypointMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps, averaged over joints.

    With `use_target_weight`, each joint's heatmaps are multiplied by its weight before the difference
    (so a weight-0 joint, unlabelled or outside the crop, contributes nothing and gets no gradient).
    The result carries HRNet's factor 0.5 (it is `0.5 * mean((w * (pred - target))**2)` over batch,
    joints and pixels), so loss values are comparable with the published training logs.
    """

    def __init__(self, use_target_weight: bool = True) -> None:
        super().__init__()
        self.use_target_weight = use_target_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                target_weight: torch.Tensor) -> torch.Tensor:
        diff = pred - target  # (B, K, h, w)
        if self.use_target_weight:
            diff = diff * target_weight.unsqueeze(-1)  # (B, K, 1, 1) broadcast
        return 0.5 * diff.pow(2).mean()
