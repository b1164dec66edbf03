"""ViPNAS spatial-level search space, MobileNetV3 family (inverted residuals), weight-sharing supernet.

The searched S-ViPNAS-MobileNetV3 is what MMPose ships as `ViPNAS_MobileNetV3` + `ViPNASHead`.
Network: stem (k x k stride-2 conv, BN, h-swish), then per stage `depth` inverted residuals
(1x1 expand conv to `width * expansion`, k x k conv with `groups` groups and the stage's stride
on the first block, optional attention on the expanded features, 1x1 projection to `width`;
identity shortcut when stride 1 and the widths agree), each stage with its fixed activation
(ReLU or h-swish, as MobileNetV3 places them), then the ViPNAS head (nas/pose/vipnas_head.py).

Genotype: as the ResNet family's (search_spaces/vipnas_resnet.py), plus a searched `expansion`
per stage:
    {"stem":   {"width": 16, "kernel": 3},
     "stages": [{"depth": 4, "width": 24, "expansion": 5, "kernel": 7, "groups": 120,
                 "attention": "se"}, ...],
     "head":   {"deconv_channels": [160, 160, 160], "deconv_groups": [160, 160, 160]}}
`groups` is the group count of the k x k conv (= width * expansion for depthwise) and must
divide it. Fixed settings are constructor arguments: `strides`, `activations` (per stage),
`stem_activation`, and `project_activation` (MMPose's block also activates the projection;
MobileNetV3 keeps it linear, the default here). SE blocks squeeze by 4 with a hard-sigmoid gate.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from search_spaces.bounds import Bound
from search_spaces.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticViPNASHead, attention_dict
from search_spaces.vipnas_base import ATTENTIONS, COMMON_BOUNDS, ViPNASSpace, names
from search_spaces.vipnas_nets import ElasticPoseNet, ElasticStem, Path, PoseNet, Stem

SE_GATE = "hsigmoid"  # MobileNetV3 SE blocks gate with a hard sigmoid
ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish}

# The range of every size argument (rows shared with the ResNet family: vipnas_base.py).
BOUNDS = {**COMMON_BOUNDS,
          "expansion_choices": Bound(1, 12, "MobileNetV3's and S-ViPNAS-MobileNetV3's largest is 6; x2", "list")}


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name](inplace=True)


class InvertedResidual(nn.Module):
    """1x1 expand -> k x k grouped (strided) -> attention -> 1x1 project, identity when shapes agree."""

    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, c_in: int, c_out: int, mid: int, stride: int, kernel: int, groups: int,
                 attention_kind: str, act: str, project_act: bool):
        super().__init__()
        self.expand_conv, self.expand_bn = nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.dw_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.dw_bn, self.act = nn.BatchNorm2d(mid), _act(act)
        self.attention = attention_dict([attention_kind], mid, elastic=False, se_gate=SE_GATE)
        self.project_conv, self.project_bn = nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.project_act = _act(act) if project_act else nn.Identity()
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.expand_bn(self.expand_conv(x)))  # (B, mid, H, W)
        out = self.act(self.dw_bn(self.dw_conv(out)))  # (B, mid, H/s, W/s)
        for block in self.attention.values():
            out = block(out)
        out = self.project_act(self.project_bn(self.project_conv(out)))
        return x + out if self.residual else out


class ElasticInvertedResidual(nn.Module):
    def __init__(self, c_in_max: int, c_out_max: int, mid_max: int, stride: int, kernel_max: int,
                 attention_kinds: Sequence[str], act: str, project_act: bool):
        super().__init__()
        self.stride = stride
        self.expand_conv, self.expand_bn = ElasticConv2d(c_in_max, mid_max, 1), ElasticBatchNorm2d(mid_max)
        self.dw_conv = ElasticConv2d(mid_max, mid_max, kernel_max, stride)
        self.dw_bn, self.act = ElasticBatchNorm2d(mid_max), _act(act)
        self.attention = attention_dict(attention_kinds, mid_max, elastic=True, se_gate=SE_GATE)
        self.project_conv, self.project_bn = ElasticConv2d(mid_max, c_out_max, 1), ElasticBatchNorm2d(c_out_max)
        self.project_act = _act(act) if project_act else nn.Identity()

    def forward(self, x: torch.Tensor, stage: dict[str, Any]) -> torch.Tensor:
        mid, c_out = stage["width"] * stage["expansion"], stage["width"]
        out = self.act(self.expand_bn(self.expand_conv(x, mid)))
        out = self.act(self.dw_bn(self.dw_conv(out, mid, stage["kernel"], stage["groups"])))
        if stage["attention"] != "none":
            out = self.attention[stage["attention"]](out)
        out = self.project_act(self.project_bn(self.project_conv(out, c_out)))
        return x + out if self.stride == 1 and x.shape[1] == c_out else out


class ViPNASMobileNetV3Space(ViPNASSpace):
    """Elastic ViPNAS MobileNetV3 family. Defaults are CPU-sized; genotypes/s_vipnas_mbv3.json has
    the full-size space (MMPose's S-ViPNAS-MobileNetV3 settings) in its space_args."""

    name = "vipnas_mbv3"
    stage_fields = ("depth", "width", "expansion", "kernel", "groups", "attention")
    stem_stride = 2

    def __init__(self, stem_width_choices: Sequence[int] = (8,),
                 width_choices: Sequence[Sequence[int]] = ((8,), (8, 16), (16, 24)),
                 depth_choices: Sequence[Sequence[int]] = ((1,), (1, 2), (1, 2)),
                 expansion_choices: Sequence[int] = (1, 2, 4), kernel_choices: Sequence[int] = (3, 5, 7),
                 group_choices: Sequence[int] = (2, 4, 8), attention_choices: Sequence[str] = ATTENTIONS,
                 strides: Sequence[int] = (1, 2, 2), activations: Sequence[str] = ("relu", "relu", "hswish"),
                 stem_activation: str = "hswish", project_activation: bool = False,
                 head_channel_choices: Sequence[int] = (16, 32), head_group_choices: Sequence[int] = (1, 4, 16),
                 num_keypoints: int = 17):
        if not isinstance(project_activation, bool):
            raise ValueError(f"project_activation must be true or false, got {project_activation!r}")
        acts = names("activations", activations, list(ACTIVATIONS))
        super().__init__(dict(
            stem_width_choices=stem_width_choices, width_choices=width_choices, depth_choices=depth_choices,
            expansion_choices=expansion_choices, kernel_choices=kernel_choices, group_choices=group_choices,
            attention_choices=attention_choices, strides=strides, activations=acts,
            stem_activation=names("stem_activation", [stem_activation], list(ACTIVATIONS))[0],
            project_activation=project_activation, head_channel_choices=head_channel_choices,
            head_group_choices=head_group_choices, num_keypoints=num_keypoints), BOUNDS)
        if len(acts) != self.num_stages:
            raise ValueError(f"activations must name one per stage ({self.num_stages}), got {acts}")

    def spatial_channels(self, stage: dict[str, Any]) -> int:
        return stage["width"] * stage["expansion"]

    def out_channels(self, stage: dict[str, Any]) -> int:
        return stage["width"]

    def stage_choices(self, i: int) -> dict[str, list]:
        return {**super().stage_choices(i), "expansion": self.args["expansion_choices"]}

    def _make_net(self, path: Path) -> PoseNet:
        a = self.args
        stem = Stem(path["stem"]["width"], path["stem"]["kernel"], _act(a["stem_activation"]), pool=False)
        stages, c_in = [], path["stem"]["width"]
        for stage, stride, act in zip(path["stages"], a["strides"], a["activations"]):
            blocks = []
            for j in range(stage["depth"]):
                blocks.append(InvertedResidual(
                    c_in, stage["width"], self.spatial_channels(stage), stride if j == 0 else 1, stage["kernel"],
                    stage["groups"], stage["attention"], act, a["project_activation"]))
                c_in = stage["width"]
            stages.append(blocks)
        return PoseNet(stem, stages, self._head(c_in, path))

    def _make_supernet(self, big: Path) -> ElasticPoseNet:
        a = self.args
        k_max = max(a["kernel_choices"])
        stem = ElasticStem(big["stem"]["width"], k_max, _act(a["stem_activation"]), pool=False)
        stages, c_in = [], big["stem"]["width"]
        for stage, stride, act in zip(big["stages"], a["strides"], a["activations"]):
            stages.append([ElasticInvertedResidual(
                c_in if j == 0 else stage["width"], stage["width"], self.spatial_channels(stage),
                stride if j == 0 else 1, k_max, a["attention_choices"], act, a["project_activation"])
                for j in range(stage["depth"])])
            c_in = stage["width"]
        head = ElasticViPNASHead(c_in, max(a["head_channel_choices"]), self.num_deconv, a["num_keypoints"])
        return ElasticPoseNet(stem, stages, head, big)
