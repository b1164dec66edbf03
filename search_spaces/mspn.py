"""MSPN, the multi-stage pose network (Li et al., "Rethinking on Multi-Stage Networks for Human Pose
Estimation", arXiv 1901.00148), as a search space over its stage count, block depths and unit width.

MSPN's point is that stacking stages pays off when every stage is a good single-stage network (a
ResNet down path with a light FPN-like up path), features flow between stages, and supervision goes
coarse to fine. Layout (names and widths as in fenglinglwb/MSPN and MMPose's MSPN backbone + MSPNHead):

- stage 1's down path starts with ResNet's stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool);
  every stage's down path then has four ResNet layers of bottlenecks, `depths` blocks each, of planes
  base_width x 1/2/4/8 (outputs x4: 256/512/1024/2048 at 1/4..1/32 for ResNet-50's base width 64).
  Later stages have no stem: they start from the previous stage's 1/4 output (below).
- every stage's up path has four units, 1/32 to 1/4. Unit j: a lateral 1x1 conv + BN of the down
  feature to `unit_channels`; from the 2nd unit on, plus the previous unit's output upsampled
  (bilinear, align_corners) and put through a 1x1 conv + BN; then ReLU. Each unit predicts heatmaps
  (1x1 conv + BN + ReLU, 3x3 conv to K + BN), resized bilinearly to the 1/4 resolution.
- between stages (cross-stage feature aggregation): per scale, a 1x1 conv + BN + ReLU of the down
  feature (C_i -> C_i) and one of the unit output (unit_channels -> C_i) are added to the next stage's
  down path after its layer at that scale; the next stage's input is the 1/4 unit output through a
  1x1 conv + BN + ReLU to base_width channels.
Convolutions have no bias (each is followed by BN), as in the published code.

Output: the network returns a list of stages x 4 heatmap tensors (B, K, H/4, W/4), stage-major, within
a stage unit 1 (from 1/32) to unit 4 (1/4); the last is the prediction. `heatmap_outputs()` describes
their supervision (MMPose's MSPN configs and the original code): Gaussian targets of kernel size
15/11/9/7 for units 1-4 of every stage but the last, 11/9/7/5 in the last; loss weight 1/4 on units
1-3 and 1 on unit 4, whose loss keeps only the 8 hardest keypoints per sample (OHKM).

Genotype: {"stages": 2, "depths": [3, 4, 6, 3], "unit_channels": 256} (the depths hold for every
stage, as in MSPN). The choice lists are constructor arguments: `stage_choices`, `depth_choices` (one
list per ResNet layer) and `unit_channel_choices`; `base_width` is fixed per space (64 in the published
networks; the CPU-sized default is 8). There are no architecture parameters: `supernet()` is the
largest member, searched by random search / evolution.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import init_head
from nas.pose.loss import HeatmapOutput, sigma_for_kernel
from nas.pose.pretrained import load_pretrained
from search_spaces.bounds import Bound, check_args, is_int, is_list

NUM_UNITS = 4  # ResNet layers per down path = up-path units per stage (1/4 .. 1/32)
EXPANSION = 4  # a bottleneck's output is 4x its planes
# Gaussian kernel sizes of the targets of units 1-4 (coarse to fine): MSPN's coarse-to-fine supervision
KERNELS_INNER = (15, 11, 9, 7)  # every stage but the last
KERNELS_LAST = (11, 9, 7, 5)  # the last stage
UNIT_WEIGHTS = (0.25, 0.25, 0.25, 1.0)  # loss weights of units 1-4 (the original code divides units 1-3 by 4)
OHKM_TOPK = 8  # hard keypoints kept per sample on every stage's last unit

BOUNDS = {
    "base_width": Bound(1, 256, "ResNet-50's stem and first planes are 64; x4"),
    "stage_choices": Bound(1, 8, "MSPN's largest published network has 4 stages; x2", "list"),
    "depth_choices": Bound(1, 72, "ResNet-152's third layer has 36 blocks; x2", "lists"),
    "unit_channel_choices": Bound(1, 1024, "MSPN's up-path units are 256 wide; x4", "list"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}
GENOTYPE_KEYS = ("stages", "depths", "unit_channels")


def _conv_bn(c_in: int, c_out: int, relu: bool, kernel: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv), with its attribute names."""

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * EXPANSION
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class DownPath(nn.Module):
    """ResNet without its classifier: (stage 1 only) conv1/bn1/relu/maxpool, then layer1..layer4, named as
    in torchvision so an ImageNet ResNet state dict loads as it is. Returns the four layer outputs, 1/4
    first; `skips` (from the previous stage, 1/4 first) are added after the layer of their scale."""

    def __init__(self, base_width: int, depths: Sequence[int], stem: bool):
        super().__init__()
        self.stem = stem
        if stem:
            self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base_width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = base_width
        for i, depth in enumerate(depths):
            planes = base_width * 2 ** i
            blocks = [Bottleneck(c_in if j == 0 else planes * EXPANSION, planes, 2 if i > 0 and j == 0 else 1)
                      for j in range(depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = planes * EXPANSION

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None) -> list[torch.Tensor]:
        if self.stem:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(NUM_UNITS):
            x = getattr(self, f"layer{i + 1}")(x)
            if skips is not None:
                x = x + skips[i]
            features.append(x)
        return features


class UpUnit(nn.Module):
    """One unit of the up path: lateral 1x1 conv (+ the upsampled previous unit), ReLU; its heatmaps."""

    def __init__(self, c_in: int, unit_channels: int, num_keypoints: int, first: bool):
        super().__init__()
        self.lateral = _conv_bn(c_in, unit_channels, relu=False)
        self.up = None if first else _conv_bn(unit_channels, unit_channels, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.predict = nn.Sequential(_conv_bn(unit_channels, unit_channels, relu=True),
                                     _conv_bn(unit_channels, num_keypoints, relu=False, kernel=3))

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        out = self.lateral(x)
        if self.up is not None:
            previous = F.interpolate(previous, size=x.shape[-2:], mode="bilinear", align_corners=True)
            out = out + self.up(previous)
        return self.relu(out)


class Stage(nn.Module):
    """A down path, an up path, and (every stage but the last) what it hands the next stage."""

    def __init__(self, base_width: int, depths: Sequence[int], unit_channels: int, num_keypoints: int,
                 first: bool, last: bool):
        super().__init__()
        widths = [base_width * 2 ** i * EXPANSION for i in range(NUM_UNITS)]  # layer outputs, 1/4 first
        self.down = DownPath(base_width, depths, stem=first)
        self.units = nn.ModuleList(UpUnit(c, unit_channels, num_keypoints, first=j == 0)
                                   for j, c in enumerate(reversed(widths)))
        self.skip_down = self.skip_up = self.cross = None
        if not last:  # cross-stage aggregation, per scale 1/4 first; the next stage's input
            self.skip_down = nn.ModuleList(_conv_bn(c, c, relu=True) for c in widths)
            self.skip_up = nn.ModuleList(_conv_bn(unit_channels, c, relu=True) for c in widths)
            self.cross = _conv_bn(unit_channels, base_width, relu=True)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None
                ) -> tuple[list[torch.Tensor], torch.Tensor | None, list[torch.Tensor] | None]:
        """Heatmaps of units 1-4, the next stage's input and skips (None after the last stage)."""
        downs = self.down(x, skips)  # 1/4 .. 1/32
        size = downs[0].shape[-2:]
        ups, heatmaps, previous = [], [], None
        for unit, feature in zip(self.units, reversed(downs)):
            previous = unit(feature, previous)
            ups.append(previous)
            heatmap = unit.predict(previous)
            if heatmap.shape[-2:] != size:
                heatmap = F.interpolate(heatmap, size=size, mode="bilinear", align_corners=True)
            heatmaps.append(heatmap)
        if self.cross is None:
            return heatmaps, None, None
        skips = [sd(d) + su(u) for d, u, sd, su in zip(downs, reversed(ups), self.skip_down, self.skip_up)]
        return heatmaps, self.cross(ups[-1]), skips


def unit_kernels(num_stages: int) -> list[int]:
    """The Gaussian kernel size of every output's target, in output order."""
    return [k for s in range(num_stages) for k in (KERNELS_LAST if s == num_stages - 1 else KERNELS_INNER)]


class MSPNNet(nn.Module):
    """(B, 3, H, W) -> a list of stages x 4 heatmap tensors (B, K, H/4, W/4); the last is the prediction."""

    def __init__(self, base_width: int, num_stages: int, depths: Sequence[int], unit_channels: int,
                 num_keypoints: int, heatmap_bn_init: float = 1.0):
        super().__init__()
        self.stages = nn.ModuleList(Stage(base_width, depths, unit_channels, num_keypoints, first=s == 0,
                                          last=s == num_stages - 1) for s in range(num_stages))
        for module in self.modules():  # torchvision's ResNet init (MMPose's kaiming_init: the same rule)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for stage in self.stages:
            for unit in stage.units:
                init_head(unit.predict)
                nn.init.constant_(unit.predict[-1][1].weight, heatmap_bn_init)  # the heatmaps' BN scale

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        skips = None
        for stage in self.stages:
            heatmaps, x, skips = stage(x, skips)
            outputs += heatmaps
        return outputs

    def heatmap_outputs(self) -> list[HeatmapOutput]:
        """One `nas.pose.loss.HeatmapOutput` per output, in output order (see the module docstring)."""
        kernels = unit_kernels(len(self.stages))
        return [HeatmapOutput(sigma=sigma_for_kernel(k), weight=UNIT_WEIGHTS[i % NUM_UNITS],
                              ohkm_topk=OHKM_TOPK if i % NUM_UNITS == NUM_UNITS - 1 else None)
                for i, k in enumerate(kernels)]

    def load_pretrained(self, path: str) -> dict[str, list[str]]:
        """An ImageNet ResNet (torchvision's state dict: the down paths use its names, so no renaming) into
        every stage's down path, as MMPose's MSPN does; the stem only exists in stage 1. The report's keys
        are prefixed by their stage; "unused" lists the file's tensors no stage took (its classifier)."""
        report: dict[str, list[str]] = {"loaded": [], "mismatched": [], "missing": []}
        unused: set[str] | None = None
        for s, stage in enumerate(self.stages):
            part = load_pretrained(stage.down, path, what=f"stage {s + 1}'s ResNet down path")
            for kind in report:
                report[kind] += [f"stages.{s}.down.{key}" for key in part[kind]]
            unused = set(part["unused"]) if unused is None else unused & set(part["unused"])
        report["unused"] = sorted(unused or ())
        return report


class MSPNSpace:
    """MSPN's stage count, ResNet layer depths and up-path width. Defaults are CPU-sized;
    genotypes/mspn_*stage_coco_256x192.json hold the published full-size space in their space_args."""

    name = "mspn"

    def __init__(self, base_width: int = 8, stage_choices: Sequence[int] = (1, 2),
                 depth_choices: Sequence[Sequence[int]] = ((1,), (1,), (1, 2), (1,)),
                 unit_channel_choices: Sequence[int] = (8, 16), num_keypoints: int = 17,
                 heatmap_bn_init: float = 1.0):
        self.args = check_args(dict(base_width=base_width, stage_choices=stage_choices, depth_choices=depth_choices,
                                    unit_channel_choices=unit_channel_choices, num_keypoints=num_keypoints), BOUNDS)
        if not isinstance(heatmap_bn_init, (int, float)) or isinstance(heatmap_bn_init, bool) \
                or not 0.0 <= heatmap_bn_init <= 1.0:
            raise ValueError(f"heatmap_bn_init must be a number in [0, 1], got {heatmap_bn_init!r}")
        self.args["heatmap_bn_init"] = float(heatmap_bn_init)
        if len(self.args["depth_choices"]) != NUM_UNITS:
            raise ValueError(f"depth_choices must give {NUM_UNITS} lists (one per ResNet layer), "
                             f"got {len(self.args['depth_choices'])}")

    def _genotype(self, genotype: dict[str, Any]) -> Genotype:
        return Genotype(space=self.name, space_args=copy.deepcopy(self.args), genotype=genotype)

    def largest(self) -> dict[str, Any]:
        a = self.args
        return {"stages": max(a["stage_choices"]), "depths": [max(c) for c in a["depth_choices"]],
                "unit_channels": max(a["unit_channel_choices"])}

    def supernet(self) -> nn.Module:
        """No weight sharing: the largest member (random search and evolution sample with `sample`)."""
        return self.build(self._genotype(self.largest()))

    def decode(self, supernet: nn.Module) -> Genotype:
        return self._genotype(self.largest())

    def sample(self, rng: random.Random) -> Genotype:
        a = self.args
        return self._genotype({"stages": rng.choice(a["stage_choices"]),
                               "depths": [rng.choice(c) for c in a["depth_choices"]],
                               "unit_channels": rng.choice(a["unit_channel_choices"])})

    def validate(self, genotype: Genotype) -> None:
        g, a = genotype.genotype, self.args
        if not isinstance(g, dict) or set(g) != set(GENOTYPE_KEYS):
            got = sorted(g) if isinstance(g, dict) else type(g).__name__
            raise GenotypeError(f"field 'genotype' must be an object with keys {list(GENOTYPE_KEYS)}, got {got}")
        _check_choice("stages", g["stages"], a["stage_choices"])
        _check_choice("unit_channels", g["unit_channels"], a["unit_channel_choices"])
        depths = g["depths"]
        if not is_list(depths) or len(depths) != NUM_UNITS:
            raise GenotypeError(f"field 'genotype.depths' must list {NUM_UNITS} block counts (one per ResNet "
                                f"layer), got {depths!r}")
        for i, (depth, choices) in enumerate(zip(depths, a["depth_choices"])):
            _check_choice(f"depths[{i}]", depth, choices)

    def build(self, genotype: Genotype) -> MSPNNet:
        self.validate(genotype)
        g = genotype.genotype
        return MSPNNet(self.args["base_width"], g["stages"], g["depths"], g["unit_channels"],
                       self.args["num_keypoints"], self.args["heatmap_bn_init"])


def _check_choice(where: str, value: Any, choices: Sequence[int]) -> None:
    if not is_int(value) or value not in choices:
        raise GenotypeError(f"field 'genotype.{where}': {value!r} is not one of {list(choices)}")
