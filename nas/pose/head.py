"""The heatmap head shared by every search space: optional upsampling, then one conv to K heatmaps."""
from __future__ import annotations

import torch
from torch import nn


def init_head(head: nn.Module) -> None:
    """Every pose head's start (SimpleBaseline's, MMPose's): conv and deconv weights ~ N(0, 0.001),
    biases 0, so the first heatmaps are near the all-zero background. BatchNorm keeps PyTorch's
    default (scale 1, shift 0), which is what SimpleBaseline sets by hand."""
    for module in head.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class HeatmapHead(nn.Module):
    """Features (B, C, h', w') -> heatmaps (B, K, h' * 2**num_deconv, w' * 2**num_deconv).

    `num_deconv` stride-2 transposed convs (each + BN + ReLU, as in SimpleBaseline) bring a coarse
    backbone up to the heatmap resolution; spaces that already reach H/4 use `num_deconv=0`.
    """

    def __init__(self, in_channels: int, num_keypoints: int, num_deconv: int = 0,
                 deconv_channels: int = 256, final_kernel: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_deconv):
            layers += [
                nn.ConvTranspose2d(channels, deconv_channels, kernel_size=4, stride=2, padding=1,
                                   bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, num_keypoints, kernel_size=final_kernel,
                               padding=final_kernel // 2)
        init_head(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(features))  # (B, K, h, w) heatmaps
