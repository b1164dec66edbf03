"""Losses of clip batches (nas.data.video_clips items: images (B, L, 3, H, W), targets (B, L, K, h, w),
target_weights (B, L, K, 1), affines (B, L, 2, 3)) for `Trainer(loss_fn=...)`.

- `frames_loss`: an image network on every frame of the clips, each on its own (a key network, or a light
  network trained without fusion).
- `temporal_loss`: a TemporalPoseNet run online over each clip, the previous frame's heatmaps warped into the
  next crop, so training sees the network's own propagated predictions (with their errors), not the ground
  truth; the key frames' loss is left out while the key network is frozen.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def _flat(batch: dict[str, Any], key: str, frames: slice = slice(None)) -> torch.Tensor:
    value = batch[key][:, frames]
    return value.reshape(-1, *value.shape[2:])


def frames_loss(criterion: nn.Module) -> Callable[[nn.Module, dict[str, Any]], torch.Tensor]:
    def loss(net: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        out = net(_flat(batch, "images"))
        out = out[-1] if isinstance(out, (list, tuple)) else out
        return criterion(out, _flat(batch, "targets"), _flat(batch, "target_weights"))
    return loss


def temporal_loss(criterion: nn.Module, train_key: bool = False) -> Callable[[nn.Module, dict[str, Any]], torch.Tensor]:
    """`net` is a TemporalPoseNet (or its DDP wrapper); with train_key=False the key frames' heatmaps only feed
    the next frame (the key network should then be frozen: requires_grad False, eval mode)."""
    def loss(net: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        module = getattr(net, "module", net)
        heat = net(batch["images"], batch["affines"])  # (B, L, K, h, w)
        cycle = module.cycle + 1
        keep = [t for t in range(heat.shape[1]) if train_key or t % cycle != 0]
        if not keep:
            raise ValueError(f"clips of {heat.shape[1]} frame(s) hold no light frame to train (cycle {cycle})")
        index = torch.tensor(keep, device=heat.device)
        pick = lambda x: x.index_select(1, index).reshape(-1, *x.shape[2:])  # noqa: E731
        return criterion(pick(heat), pick(batch["targets"]), pick(batch["target_weights"]))
    return loss
