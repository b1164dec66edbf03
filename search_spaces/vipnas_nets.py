"""The network skeletons both ViPNAS families share: the standalone network and the elastic
supernet (with the same module names, so the supernet's weights can be copied into a standalone
network by name), and the stem in both forms."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.genotype import Genotype
from search_spaces.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticViPNASHead

Path = dict[str, Any]  # a genotype's "genotype" dict: {"stem": ..., "stages": [...], "head": ...}


class PoseNet(nn.Module):
    """Standalone network: stem -> stages -> head, (B, 3, H, W) -> (B, K, H/4, W/4)."""

    def __init__(self, stem: nn.Module, stages: list[list[nn.Module]], head: nn.Module):
        super().__init__()
        self.stem, self.head = stem, head
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


class ElasticPoseNet(nn.Module):
    """The supernet: every block holds its stage's largest choice; `set_path` picks the member run."""

    def __init__(self, stem: nn.Module, stages: list[list[nn.Module]], head: ElasticViPNASHead,
                 largest: Path):
        super().__init__()
        self.stem, self.head = stem, head
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.largest, self.path = largest, None

    def set_path(self, genotype: Genotype | Path | None) -> None:
        """Run `genotype` (a member of the space) from now on; None runs the largest member."""
        self.path = genotype.genotype if isinstance(genotype, Genotype) else genotype

    def active(self) -> Path:
        return self.path if self.path is not None else self.largest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.active()
        x = self.stem(x, path["stem"])
        for blocks, stage in zip(self.stages, path["stages"]):
            for block in blocks[:stage["depth"]]:
                x = block(x, stage)
        return self.head(x, path["head"]["deconv_channels"], path["head"]["deconv_groups"])


class Stem(nn.Sequential):
    """k x k stride-2 conv, BN, activation (+ a 3x3 stride-2 max-pool for the ResNet family)."""

    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, width: int, kernel: int, act: nn.Module, pool: bool):
        layers = dict(conv=nn.Conv2d(3, width, kernel, 2, kernel // 2, bias=False),
                      bn=nn.BatchNorm2d(width), act=act)
        if pool:
            layers["pool"] = nn.MaxPool2d(3, 2, 1)
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)


class ElasticStem(nn.Module):
    def __init__(self, width_max: int, kernel_max: int, act: nn.Module, pool: bool):
        super().__init__()
        self.conv = ElasticConv2d(3, width_max, kernel_max, stride=2)
        self.bn, self.act = ElasticBatchNorm2d(width_max), act
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor, stem: dict[str, int]) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x, stem["width"], stem["kernel"]))))
