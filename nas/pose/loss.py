"""The heatmap regression losses: one heatmap set, or several supervised together (multi-stage networks).

A network returns either one tensor (B, K, h, w) or a list of them (MSPN: one per up-path unit of every
stage, coarse to fine; the last is the prediction, the only one evaluation decodes). Each output of a list
is supervised as its `HeatmapOutput` says: the sigma of its Gaussian target (MSPN trains coarse units on
wider Gaussians), its loss weight, and online hard keypoint mining (OHKM: per sample, only the `ohkm_topk`
keypoints with the largest loss count). The data pipeline makes one target per distinct sigma
(`batch["targets"]`, (B, S, K, h, w), in the order of `target_sigmas`); `MultiHeatmapLoss` picks each
output's. The supervision comes from the network (`heatmap_outputs()`) or from the retrain config
(`supervision=`), so it is a property of training, not of one family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class HeatmapOutput:
    """How one of a network's heatmap outputs is supervised."""
    sigma: float  # of its Gaussian target, in heatmap pixels
    weight: float = 1.0  # of its loss in the sum over outputs
    ohkm_topk: int | None = None  # None: every keypoint; k: per sample, the k with the largest loss


def sigma_for_kernel(kernel: int) -> float:
    """The sigma OpenCV gives a Gaussian kernel of odd size `kernel` when sigma is left 0:
    0.3 * ((kernel - 1) / 2 - 1) + 0.8. MSPN makes its targets by blurring a one-pixel peak with such a
    kernel (15, 11, 9, 7, 5 -> sigma 2.6, 2.0, 1.7, 1.4, 1.1); our targets are the Gaussian itself."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"a Gaussian kernel size is odd and positive, got {kernel}")
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def final_heatmaps(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The prediction among a network's outputs: the tensor itself, or the last of a list."""
    return output[-1] if isinstance(output, (list, tuple)) else output


class KeypointMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps, averaged over joints.

    With `use_target_weight`, each joint's heatmaps are multiplied by its weight before the difference
    (so a weight-0 joint, unlabelled or outside the crop, contributes nothing and gets no gradient).
    The result carries HRNet's factor 0.5 (it is `0.5 * mean((w * (pred - target))**2)` over batch,
    joints and pixels), so loss values are comparable with the published training logs.
    `ohkm_topk=k`: per sample only the k joints with the largest loss count, averaged over them (HRNet's
    and MSPN's OHKM loss).
    """

    def __init__(self, use_target_weight: bool = True, ohkm_topk: int | None = None) -> None:
        super().__init__()
        self.use_target_weight, self.ohkm_topk = use_target_weight, ohkm_topk

    def per_joint(self, pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
        """(B, K): 0.5 * the mean over pixels of the (weighted) squared difference, per sample and joint."""
        diff = pred - target  # (B, K, h, w)
        if self.use_target_weight:
            diff = diff * target_weight.unsqueeze(-1)  # (B, K, 1, 1) broadcast
        return 0.5 * diff.pow(2).flatten(2).mean(dim=2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                target_weight: torch.Tensor) -> torch.Tensor:
        losses = self.per_joint(pred, target, target_weight)
        if self.ohkm_topk is None:
            return losses.mean()
        k = min(self.ohkm_topk, losses.shape[1])
        return losses.topk(k, dim=1).values.mean()  # per sample the k hardest, averaged; then over samples


class MultiHeatmapLoss(nn.Module):
    """The weighted sum over a network's outputs of each output's `KeypointMSELoss` against the target
    of its sigma. `target_sigmas` is the order of the targets the data makes (`batch["targets"]`)."""

    def __init__(self, outputs: Sequence[HeatmapOutput], target_sigmas: Sequence[float],
                 use_target_weight: bool = True) -> None:
        super().__init__()
        self.outputs, self.target_sigmas = list(outputs), [float(s) for s in target_sigmas]
        self.index = [_sigma_index(o.sigma, self.target_sigmas) for o in self.outputs]
        self.terms = nn.ModuleList(KeypointMSELoss(use_target_weight, o.ohkm_topk) for o in self.outputs)

    def forward(self, preds: Sequence[torch.Tensor], targets: torch.Tensor,
                target_weight: torch.Tensor) -> torch.Tensor:
        if len(preds) != len(self.outputs):
            raise ValueError(f"the network returned {len(preds)} heatmap sets, the supervision describes "
                             f"{len(self.outputs)}")
        total = preds[0].new_zeros(())
        for pred, out, index, term in zip(preds, self.outputs, self.index, self.terms):
            total = total + out.weight * term(pred, targets[:, index], target_weight)
        return total


def _sigma_index(sigma: float, sigmas: Sequence[float]) -> int:
    for i, s in enumerate(sigmas):
        if abs(s - sigma) < 1e-6:
            return i
    raise ValueError(f"no target of sigma {sigma:g} is made (target sigmas {list(sigmas)})")


def distinct_sigmas(outputs: Sequence[HeatmapOutput]) -> list[float]:
    """The sigmas the data must make targets for, in first-use order."""
    seen: list[float] = []
    for out in outputs:
        if not any(abs(out.sigma - s) < 1e-6 for s in seen):
            seen.append(float(out.sigma))
    return seen


def supervised_loss(criterion: nn.Module, output: Any, batch: dict[str, Any], amp: bool = False) -> torch.Tensor:
    """The loss of a network's output on a batch: one heatmap set against `batch["target"]`; several
    through `MultiHeatmapLoss` against `batch["targets"]`, or, under a single-output criterion (a strategy
    searching a multi-output family), the final set alone. Half-precision outputs are compared in fp32.
    (`MultiHeatmapLoss` also takes a single output: one network trained with another sigma or OHKM.)"""
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    outputs = [o.float() for o in outputs] if amp else outputs
    if isinstance(criterion, MultiHeatmapLoss):  # also a single output given its own sigma / OHKM
        return criterion(outputs, batch["targets"], batch["target_weight"])
    return criterion(outputs[-1], batch["target"], batch["target_weight"])
