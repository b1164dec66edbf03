"""LPN (Zhang et al., "Simple and Lightweight Human Pose Estimation", arXiv 1911.10346).

The light end of the published top-down baselines, kept as a family so a search can be measured
against it (its per-stage depths and widths are also a natural space for random search).
SimpleBaseline made light: a ResNet-shaped backbone of lightweight bottlenecks (expansion 1: 1x1
conv, depthwise 3x3 conv, 1x1 conv, each + BN, ReLU after the first two; a GCNet global-context
block after the last BN, then the residual add and ReLU), whose last stage keeps stride 16, and a
light head ("gd"): per x2 step a 4x4 stride-2 transposed conv with gcd(C_in, C_out) groups + BN +
ReLU, then a 1x1 conv + BN + ReLU; a final 1x1 conv with bias gives the K heatmaps. Transcribed
from the authors' code (zhang943/lpn-pytorch, lib/models/lpn.py and lightweight_modules.py; the
LPN-100 layout from cavalleria/humanpose.pytorch). The GC block is search_spaces/elastic.py's
`GlobalContext`: the same block as LPN's GCBlock (attention pooling by a 1x1 conv to one channel +
softmax over H x W; channel-add transform 1x1 conv to max(C/16, 16), LayerNorm, ReLU, 1x1 conv;
its last conv starts at zero). LPN trains from scratch, so there is no `load_pretrained`; the
backbone keeps PyTorch's default initialisation, as the ViPNAS spaces (LPN's code draws every conv
from N(0, 0.001)), the head `init_head`'s.

Genotype:
    {"depths": [3, 4, 6, 3], "widths": [64, 128, 256, 512], "attention": "gc", "head_channels": [256, 256]}
one depth and one width per stage (from the per-stage `depth_choices` / `width_choices`), one
attention kind for every block ("gc" as LPN, or "none"), one width per x2 deconv of the head
(`head_channel_choices`; their number follows from the strides). Published members: LPN-50
[3, 4, 6, 3], LPN-100 [3, 13, 30, 3], LPN-101 [3, 4, 23, 3], LPN-152 [3, 8, 36, 3], all at widths
64/128/256/512, stem 64, strides [1, 2, 2, 1], head [256, 256]. The CPU default is narrow and
shallow with stride 8 and one deconv (a 96x72 input is not a multiple of 16).

No architecture parameters: `supernet()` is the build of the default member (the first choice of
each list); random search and evolution sample members.
"""
from __future__ import annotations

import copy
import math
import random
from typing import Any, Sequence

import torch
from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import init_head
from search_spaces.bounds import Bound, check_args
from search_spaces.elastic import GlobalContext
from search_spaces.vipnas_base import check_choice, check_keys, names
from search_spaces.vipnas_nets import PoseNet, Stem

ATTENTIONS = ("gc", "none")
MAX_STAGES = 8  # LPN has 4

# The range of every size argument (the published value x a margin).
BOUNDS = {
    "stem_channels": Bound(1, 256, "LPN's stem is 64 wide; x4"),
    "width_choices": Bound(1, 2048, "LPN's widest stage is 512; x4", "lists"),
    "depth_choices": Bound(1, 72, "LPN-152's third stage has 36 blocks; x2", "lists"),
    "strides": Bound(1, 2, "each stage keeps (1) or halves (2) the resolution", "list"),
    "head_channel_choices": Bound(1, 1024, "LPN's deconvs are 256 wide; x4", "list"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}


class LightweightBottleneck(nn.Module):
    """1x1 -> depthwise 3x3 (strided) -> 1x1, GC block, residual (projected when the shape changes)."""

    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, c_in: int, width: int, stride: int, attention: str):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=width, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width)
        self.att = GlobalContext(width) if attention == "gc" else None
        self.downsample = None
        if stride != 1 or c_in != width:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, width, 1, stride, bias=False), nn.BatchNorm2d(width))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))
        if self.att is not None:
            out = self.att(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class LPNHead(nn.Module):
    """LPN's "gd" head: per x2 step a group deconv (gcd(C_in, C_out) groups) + BN + ReLU and a 1x1 conv
    + BN + ReLU; then a 1x1 conv with bias to the heatmaps. (B, C, h, w) -> (B, K, h * 2**n, w * 2**n)."""

    latency_block = True

    def __init__(self, in_channels: int, channels: Sequence[int], num_keypoints: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, groups=math.gcd(c_in, c_out),
                                          bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(c_in, num_keypoints, 1)
        init_head(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(features))  # (B, K, H/4, W/4) heatmaps


def make_lpn(stem_channels: int, depths: Sequence[int], widths: Sequence[int], strides: Sequence[int],
             attention: str, head_channels: Sequence[int], num_keypoints: int) -> PoseNet:
    """The standalone network: 7x7 stride-2 stem + max-pool, the stages, the gd head."""
    stem = Stem(stem_channels, 7, nn.ReLU(inplace=True), pool=True)
    stages, c_in = [], stem_channels
    for depth, width, stride in zip(depths, widths, strides):
        stages.append([LightweightBottleneck(c_in if j == 0 else width, width, stride if j == 0 else 1, attention)
                       for j in range(depth)])
        c_in = width
    return PoseNet(stem, stages, LPNHead(c_in, head_channels, num_keypoints))


class LPNSpace:
    """Defaults are CPU-sized; the genotypes/lpn*_coco_256x192.json files hold the published settings."""

    name = "lpn"

    def __init__(self, stem_channels: int = 16,
                 width_choices: Sequence[Sequence[int]] = ((8, 16), (16, 24), (24, 32), (32, 48)),
                 depth_choices: Sequence[Sequence[int]] = ((1, 2), (1, 2), (2, 3), (1, 2)),
                 strides: Sequence[int] = (1, 2, 1, 1), attention_choices: Sequence[str] = ATTENTIONS,
                 head_channel_choices: Sequence[int] = (32, 16), num_keypoints: int = 17):
        args = check_args(dict(stem_channels=stem_channels, width_choices=width_choices,
                               depth_choices=depth_choices, strides=strides,
                               head_channel_choices=head_channel_choices, num_keypoints=num_keypoints), BOUNDS)
        args["attention_choices"] = names("attention_choices", attention_choices, ATTENTIONS)
        if len(args["strides"]) > MAX_STAGES:
            raise ValueError(f"strides: {len(args['strides'])} stages, at most {MAX_STAGES} allowed")
        for key in ("width_choices", "depth_choices"):
            if len(args[key]) != len(args["strides"]):
                raise ValueError(f"{key} must give a list per stage ({len(args['strides'])} stages, as strides)")
        self.args: dict[str, Any] = args

    @property
    def num_stages(self) -> int:
        return len(self.args["strides"])

    @property
    def num_deconv(self) -> int:
        """x2 deconvs from the backbone's stride (4 x the stages' strides) up to the heatmaps' 4."""
        return int(math.log2(math.prod(self.args["strides"])))

    def _genotype(self, depths: list[int], widths: list[int], attention: str, head: list[int]) -> Genotype:
        return Genotype(space=self.name, space_args=copy.deepcopy(self.args),
                        genotype={"depths": depths, "widths": widths, "attention": attention, "head_channels": head})

    def default(self) -> Genotype:
        """The first choice of each list."""
        a = self.args
        return self._genotype([c[0] for c in a["depth_choices"]], [c[0] for c in a["width_choices"]],
                              a["attention_choices"][0], [a["head_channel_choices"][0]] * self.num_deconv)

    def supernet(self) -> nn.Module:
        return self.build(self.default())

    def decode(self, supernet: nn.Module) -> Genotype:
        return self.default()

    def sample(self, rng: random.Random) -> Genotype:
        a = self.args
        return self._genotype([rng.choice(c) for c in a["depth_choices"]], [rng.choice(c) for c in a["width_choices"]],
                              rng.choice(a["attention_choices"]),
                              [rng.choice(a["head_channel_choices"]) for _ in range(self.num_deconv)])

    def validate(self, genotype: Genotype) -> None:
        g, a = genotype.genotype, self.args
        check_keys("", g, ("depths", "widths", "attention", "head_channels"))
        for key, choices in (("depths", a["depth_choices"]), ("widths", a["width_choices"])):
            if not isinstance(g[key], list) or len(g[key]) != self.num_stages:
                raise GenotypeError(f"field 'genotype.{key}' must list {self.num_stages} values (one per stage), "
                                    f"got {g[key]!r}")
            for i, (value, stage_choices) in enumerate(zip(g[key], choices)):
                check_choice(f"{key}[{i}]", value, stage_choices)
        check_choice("attention", g["attention"], a["attention_choices"])
        if not isinstance(g["head_channels"], list) or len(g["head_channels"]) != self.num_deconv:
            raise GenotypeError(f"field 'genotype.head_channels' must list {self.num_deconv} widths (one per x2 "
                                f"deconv from stride {4 * 2 ** self.num_deconv} to 4), got {g['head_channels']!r}")
        for j, channels in enumerate(g["head_channels"]):
            check_choice(f"head_channels[{j}]", channels, a["head_channel_choices"])

    def build(self, genotype: Genotype) -> PoseNet:
        self.validate(genotype)
        g, a = genotype.genotype, self.args
        return make_lpn(a["stem_channels"], g["depths"], g["widths"], a["strides"], g["attention"],
                        g["head_channels"], a["num_keypoints"])
