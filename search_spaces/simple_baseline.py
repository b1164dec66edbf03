"""SimpleBaseline (Xiao et al., ECCV 2018): a ResNet, three deconvolutions, a 1x1 conv to heatmaps.

The reference point of the pose literature's tables (HRNet, LPN, ViPNAS compare against it), kept
here as a family so a search can be measured against it. Network: torchvision's ResNet
(`torchvision.models.resnet`: its `ResNet._make_layer`, `BasicBlock` and `Bottleneck`, without
avgpool and fc), then one 4x4 stride-2 transposed conv (no bias) + BN + ReLU per factor 2 between
the backbone's stride and 4, then a 1x1 conv with bias to the K heatmaps (nas/pose/vipnas_head.py's
`ViPNASHead` with one group per deconv is exactly that head).

Genotype: {"depth": 50, "deconv_channels": [256, 256, 256]}; `depth` names torchvision's layout
(18, 34: basic blocks; 50, 101, 152: bottlenecks) and is drawn from `depth_choices`, every deconv
width from `deconv_channel_choices`. The stem width, the four stages' widths and strides are the
space's arguments: the published networks use 64, [64, 128, 256, 512], [1, 2, 2, 2] (stride 32,
three deconvs); the CPU default is a narrow ResNet-18 of stride 8 with one deconv (a 96x72 input is
not a multiple of 32). Module names are torchvision's under `backbone.`, so `load_pretrained` takes
an ImageNet checkpoint of torchvision's ResNet as it is (fc.* skipped).

No architecture parameters: `supernet()` is the build of the default member (the first choice of
each list); random search and evolution sample members.
"""
from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from nas.genotype import Genotype, GenotypeError
from nas.pose.pretrained import load_pretrained
from nas.pose.vipnas_head import ViPNASHead
from search_spaces.bounds import Bound, BoundError, check_args
from search_spaces.vipnas_base import check_choice, check_keys

# torchvision's layouts: depth -> (block, blocks per stage)
LAYOUTS: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}
NUM_STAGES = 4  # layer1 ... layer4

# The range of every size argument (the published value x a margin).
BOUNDS = {
    "stem_channels": Bound(1, 256, "ResNet's stem is 64 wide; x4"),
    "widths": Bound(1, 2048, "ResNet's widest stage has 512 planes (2048 bottleneck outputs); x4", "list"),
    "strides": Bound(1, 2, "each stage keeps (1) or halves (2) the resolution", "list"),
    "depth_choices": Bound(18, 152, "torchvision's layouts: 18, 34, 50, 101, 152", "list"),
    "deconv_channel_choices": Bound(1, 1024, "SimpleBaseline's deconvs are 256 wide; x4", "list"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}


class ResNetBackbone(ResNet):
    """torchvision's ResNet with a chosen stem width, stage widths and strides; no avgpool, no fc.

    `ResNet.__init__` fixes the widths at 64 ... 512 and the strides at 1, 2, 2, 2 and adds the
    classifier, so it is replaced; the stages come from torchvision's own `_make_layer`, so every
    module name (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, ...) is torchvision's."""

    def __init__(self, depth: int, stem_channels: int, widths: Sequence[int], strides: Sequence[int]):
        nn.Module.__init__(self)
        block, blocks = LAYOUTS[depth]
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = stem_channels  # _make_layer's running input width
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (width, n, stride) in enumerate(zip(widths, blocks, strides), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, width, n, stride=stride))
        self.out_channels = self.inplanes
        for module in self.modules():  # torchvision's initialisation (BN keeps scale 1, shift 0)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C', H/s, W/s)


def torchvision_key(key: str) -> str | None:
    """A key of torchvision's ResNet state dict -> the backbone's (the same), or None for the classifier."""
    return None if key.startswith("fc.") else key


class SimpleBaselineNet(nn.Module):
    """(B, 3, H, W) -> (B, K, H/4, W/4): ResNet backbone, deconv head."""

    def __init__(self, depth: int, stem_channels: int, widths: Sequence[int], strides: Sequence[int],
                 deconv_channels: Sequence[int], num_keypoints: int):
        super().__init__()
        self.backbone = ResNetBackbone(depth, stem_channels, widths, strides)
        self.head = ViPNASHead(self.backbone.out_channels, deconv_channels, [1] * len(deconv_channels),
                               num_keypoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """Initialise the backbone from a torchvision ResNet checkpoint (e.g. resnet50-0676ba61.pth)."""
        return load_pretrained(self.backbone, path, rename=torchvision_key, what="ResNet backbone")


class SimpleBaselineSpace:
    """Defaults are CPU-sized; the genotypes/simple_baseline_*.json files hold the published settings."""

    name = "simple_baseline"

    def __init__(self, stem_channels: int = 16, widths: Sequence[int] = (8, 16, 24, 32),
                 strides: Sequence[int] = (1, 2, 1, 1), depth_choices: Sequence[int] = (18, 34, 50),
                 deconv_channel_choices: Sequence[int] = (32, 16), num_keypoints: int = 17):
        args = check_args(dict(stem_channels=stem_channels, widths=widths, strides=strides,
                               depth_choices=depth_choices, deconv_channel_choices=deconv_channel_choices,
                               num_keypoints=num_keypoints), BOUNDS)
        for key in ("widths", "strides"):
            if len(args[key]) != NUM_STAGES:
                raise ValueError(f"{key} must give {NUM_STAGES} values (torchvision's layer1 ... layer4), "
                                 f"got {args[key]}")
        for i, depth in enumerate(args["depth_choices"]):
            if depth not in LAYOUTS:
                raise BoundError(f"depth_choices[{i}]", f"{depth} is not one of torchvision's depths {list(LAYOUTS)}")
        self.args: dict[str, Any] = args

    @property
    def num_deconv(self) -> int:
        """x2 deconvs from the backbone's stride (4 x the stages' strides) up to the heatmaps' 4."""
        return int(math.log2(math.prod(self.args["strides"])))

    def _genotype(self, depth: int, deconv_channels: list[int]) -> Genotype:
        return Genotype(space=self.name, space_args=copy.deepcopy(self.args),
                        genotype={"depth": depth, "deconv_channels": deconv_channels})

    def default(self) -> Genotype:
        """The first choice of each list."""
        return self._genotype(self.args["depth_choices"][0],
                              [self.args["deconv_channel_choices"][0]] * self.num_deconv)

    def supernet(self) -> nn.Module:
        return self.build(self.default())

    def decode(self, supernet: nn.Module) -> Genotype:
        return self.default()

    def sample(self, rng: random.Random) -> Genotype:
        return self._genotype(rng.choice(self.args["depth_choices"]),
                              [rng.choice(self.args["deconv_channel_choices"]) for _ in range(self.num_deconv)])

    def validate(self, genotype: Genotype) -> None:
        g = genotype.genotype
        check_keys("", g, ("depth", "deconv_channels"))
        check_choice("depth", g["depth"], self.args["depth_choices"])
        if not isinstance(g["deconv_channels"], list) or len(g["deconv_channels"]) != self.num_deconv:
            raise GenotypeError(f"field 'genotype.deconv_channels' must list {self.num_deconv} widths (one per "
                                f"x2 deconv from stride {4 * 2 ** self.num_deconv} to 4), got {g['deconv_channels']!r}")
        for j, channels in enumerate(g["deconv_channels"]):
            check_choice(f"deconv_channels[{j}]", channels, self.args["deconv_channel_choices"])

    def build(self, genotype: Genotype) -> SimpleBaselineNet:
        self.validate(genotype)
        a = self.args
        return SimpleBaselineNet(genotype.genotype["depth"], a["stem_channels"], a["widths"], a["strides"],
                                 genotype.genotype["deconv_channels"], a["num_keypoints"])
