"""The ViPNAS heatmap head: group deconvolutions up to 1/4 resolution, then a 1x1 conv to heatmaps.

Like SimpleBaseline's head (4x4 stride-2 transposed convs, each + BN + ReLU), but every deconv
has its own width and group count, which ViPNAS searches: the published S-ViPNAS-Res50 uses
3 x (144 channels, 16 groups), S-ViPNAS-MobileNetV3 3 x (160 channels, 160 groups).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nas.pose.head import init_head


class ViPNASHead(nn.Module):
    """Features (B, C, h, w) -> heatmaps (B, K, h * 2**n, w * 2**n), n = len(deconv_channels)."""

    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, in_channels: int, deconv_channels: Sequence[int], deconv_groups: Sequence[int],
                 num_keypoints: int) -> None:
        super().__init__()
        if len(deconv_channels) != len(deconv_groups):
            raise ValueError(f"{len(deconv_channels)} deconv widths but {len(deconv_groups)} group counts")
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, groups in zip(deconv_channels, deconv_groups):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, groups=groups, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(c_in, num_keypoints, 1)
        init_head(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(features))  # (B, K, H/4, W/4) heatmaps
