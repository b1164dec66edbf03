"""Flip testing: average the model's heatmaps on an image and on its mirror image."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nas.data.keypoints import flip_permutation
from nas.pose.loss import final_heatmaps


def flip_heatmaps_back(heatmaps: torch.Tensor, flip_pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Heatmaps (B, K, h, w) of mirrored images -> heatmaps of the originals (mirror w, swap L/R)."""
    perm = flip_permutation(tuple(flip_pairs), heatmaps.shape[1])
    return heatmaps.flip(-1)[:, perm]


def flip_test(model: nn.Module, images: torch.Tensor, flip_pairs: Sequence[tuple[int, int]],
              shift: bool = False) -> torch.Tensor:
    """Mean of the heatmaps (B, K, h, w) of `images` and of their mirror images, flipped back.

    `shift` moves the flipped-back heatmaps one pixel right, as HRNet does. HRNet needs it because
    its targets map input x to heatmap x / stride, which a mirror does not preserve. Our encoding
    (`nas.data.transforms`) is mirror-exact (input W - 1 - x lands on heatmap w - 1 - u), so the
    shift would add a bias of half a heatmap pixel: it is off by default and kept only for models
    trained with HRNet-style targets.
    """
    heatmaps = final_heatmaps(model(images))  # (B, K, h, w): a multi-output network's prediction
    flipped = flip_heatmaps_back(final_heatmaps(model(images.flip(-1))), flip_pairs)
    if shift:
        flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
    return 0.5 * (heatmaps + flipped)
