"""ViPNAS spatial-level search space, ResNet family (bottleneck blocks), with a weight-sharing supernet.

ViPNAS (Xu et al., CVPR 2021) searches, per stage of a pose network, the depth, width, kernel size
and group number of the spatial convolution and an attention block; the searched S-ViPNAS-Res50
is what MMPose ships as `ViPNAS_ResNet` + `ViPNASHead`. Network: stem (k x k stride-2 conv, BN,
ReLU, 3x3 stride-2 max-pool), then per stage `depth` bottlenecks (1x1 conv to `width`, k x k
conv with `groups` groups and the stage's stride on the first block, 1x1 conv to
`width * expansion`, optional attention before the residual add), then the ViPNAS head
(nas/pose/vipnas_head.py): one 4x4 stride-2 group deconv per factor 2 between the backbone's
stride and 4, and a 1x1 conv to the heatmaps.

Genotype (human-readable, one entry per stage):
    {"stem":   {"width": 48, "kernel": 7},
     "stages": [{"depth": 4, "width": 80, "kernel": 3, "groups": 16, "attention": "gc"}, ...],
     "head":   {"deconv_channels": [144, 144, 144], "deconv_groups": [16, 16, 16]}}
`attention` is one of "none", "se" (squeeze-excite), "gc" (global context, GCNet); `groups` must
divide the channels of the k x k conv. The choice lists are the space's constructor arguments
(per stage for widths and depths), so a genotype file's `space_args` states its own full-size
space; fixed settings (strides, expansion) are arguments too.

Supernet: `supernet()` holds the largest member; `set_path(genotype)` makes it run exactly that
member from the shared weights (search_spaces/elastic.py: channels sliced, kernels centre-cropped,
groups the block-diagonal part of the dense weight, the first `depth` blocks of each stage).
`build(genotype, supernet)` gives the standalone network (plain torch layers, counted by thop)
and copies the member's weights out of the supernet. There are no architecture parameters:
search it with random search / evolution on the shared weights.

This file holds the ResNet family's blocks; the choices, sampling, validation and build that both
ViPNAS families share are `search_spaces/vipnas_base.ViPNASSpace`, the network skeletons
`search_spaces/vipnas_nets.py`, the elastic layers and attention blocks `search_spaces/elastic.py`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from search_spaces.bounds import Bound
from search_spaces.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticViPNASHead, attention_dict
from search_spaces.vipnas_base import ATTENTIONS, COMMON_BOUNDS, ViPNASSpace
from search_spaces.vipnas_nets import ElasticPoseNet, ElasticStem, Path, PoseNet, Stem

SE_GATE = "sigmoid"  # the ResNet family's SE blocks gate with a sigmoid

# The range of every size argument (rows shared with the MobileNetV3 family: vipnas_base.py).
BOUNDS = {**COMMON_BOUNDS,
          "expansion": Bound(1, 8, "ResNet's bottleneck expands by 4 (S-ViPNAS-Res50: 1); x2")}


# ---- the ResNet family's block -----------------------------------------------------------------

class Bottleneck(nn.Module):
    """1x1 -> k x k (grouped, strided) -> 1x1, attention, residual (projected when shapes change)."""

    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, c_in: int, width: int, expansion: int, stride: int, kernel: int, groups: int,
                 attention_kind: str):
        super().__init__()
        c_out = width * expansion
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.attention = attention_dict([attention_kind], c_out, elastic=False, se_gate=SE_GATE)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))
        for block in self.attention.values():
            out = block(out)
        identity = x if self.down is None else self.down(x)
        return self.relu(out + identity)


class ElasticBottleneck(nn.Module):
    def __init__(self, c_in_max: int, width_max: int, expansion: int, stride: int, kernel_max: int,
                 attention_kinds: Sequence[str], first: bool):
        super().__init__()
        c_out = width_max * expansion
        self.expansion, self.stride = expansion, stride
        self.conv1, self.bn1 = ElasticConv2d(c_in_max, width_max, 1), ElasticBatchNorm2d(width_max)
        self.conv2, self.bn2 = ElasticConv2d(width_max, width_max, kernel_max, stride), ElasticBatchNorm2d(width_max)
        self.conv3, self.bn3 = ElasticConv2d(width_max, c_out, 1), ElasticBatchNorm2d(c_out)
        self.attention = attention_dict(attention_kinds, c_out, elastic=True, se_gate=SE_GATE)
        self.down = nn.ModuleList([ElasticConv2d(c_in_max, c_out, 1, stride), ElasticBatchNorm2d(c_out)]) \
            if first else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, stage: dict[str, Any]) -> torch.Tensor:
        width = stage["width"]
        c_out = width * self.expansion
        out = self.relu(self.bn1(self.conv1(x, width)))
        out = self.relu(self.bn2(self.conv2(out, width, stage["kernel"], stage["groups"])))
        out = self.bn3(self.conv3(out, c_out))
        if stage["attention"] != "none":
            out = self.attention[stage["attention"]](out)
        identity = x
        if self.down is not None and (self.stride != 1 or x.shape[1] != c_out):
            identity = self.down[1](self.down[0](x, c_out))
        return self.relu(out + identity)


# ---- the space: the ResNet family's blocks on the shared ViPNAS machinery ----------------------

class ViPNASResNetSpace(ViPNASSpace):
    """Elastic ViPNAS ResNet family. Defaults are CPU-sized; genotypes/s_vipnas_res50.json has the
    full-size space (MMPose's S-ViPNAS-Res50 settings) in its space_args."""

    name = "vipnas_resnet"
    stage_fields: tuple[str, ...] = ("depth", "width", "kernel", "groups", "attention")
    stem_stride = 4  # stride-2 conv + stride-2 max-pool

    def __init__(self, stem_width_choices: Sequence[int] = (16,),
                 width_choices: Sequence[Sequence[int]] = ((8, 16), (16, 24), (24, 32)),
                 depth_choices: Sequence[Sequence[int]] = ((1, 2), (1, 2), (1, 2)),
                 kernel_choices: Sequence[int] = (3, 5, 7), group_choices: Sequence[int] = (1, 2, 4),
                 attention_choices: Sequence[str] = ATTENTIONS, strides: Sequence[int] = (1, 2, 1),
                 expansion: int = 1, head_channel_choices: Sequence[int] = (16, 32),
                 head_group_choices: Sequence[int] = (1, 2, 4), num_keypoints: int = 17):
        super().__init__(dict(
            stem_width_choices=stem_width_choices, width_choices=width_choices, depth_choices=depth_choices,
            kernel_choices=kernel_choices, group_choices=group_choices, attention_choices=attention_choices,
            strides=strides, expansion=expansion, head_channel_choices=head_channel_choices,
            head_group_choices=head_group_choices, num_keypoints=num_keypoints), BOUNDS)

    def spatial_channels(self, stage: dict[str, Any]) -> int:
        return stage["width"]

    def out_channels(self, stage: dict[str, Any]) -> int:
        return stage["width"] * self.args["expansion"]

    def _make_net(self, path: Path) -> PoseNet:
        stem = Stem(path["stem"]["width"], path["stem"]["kernel"], nn.ReLU(inplace=True), pool=True)
        stages, c_in = [], path["stem"]["width"]
        for stage, stride in zip(path["stages"], self.args["strides"]):
            blocks = []
            for j in range(stage["depth"]):
                blocks.append(Bottleneck(c_in, stage["width"], self.args["expansion"], stride if j == 0 else 1,
                                         stage["kernel"], stage["groups"], stage["attention"]))
                c_in = self.out_channels(stage)
            stages.append(blocks)
        return PoseNet(stem, stages, self._head(c_in, path))

    def _make_supernet(self, big: Path) -> ElasticPoseNet:
        a = self.args
        stem = ElasticStem(big["stem"]["width"], max(a["kernel_choices"]), nn.ReLU(inplace=True), pool=True)
        stages, c_in = [], big["stem"]["width"]
        for stage, stride in zip(big["stages"], a["strides"]):
            stages.append([ElasticBottleneck(c_in if j == 0 else self.out_channels(stage), stage["width"],
                                             a["expansion"], stride if j == 0 else 1, max(a["kernel_choices"]),
                                             a["attention_choices"], first=j == 0)
                           for j in range(stage["depth"])])
            c_in = self.out_channels(stage)
        head = ElasticViPNASHead(c_in, max(a["head_channel_choices"]), self.num_deconv, a["num_keypoints"])
        return ElasticPoseNet(stem, stages, head, big)
