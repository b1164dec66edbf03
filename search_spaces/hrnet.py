"""The HRNet family (Sun et al., CVPR 2019, "Deep High-Resolution Representation Learning for Human Pose
Estimation") as a search space: stage count, branch widths, modules per stage and blocks per branch.

HRNet keeps a 1/4-resolution branch through the whole network and adds lower-resolution branches stage by
stage, fusing all of them repeatedly; the published pose networks (W32, W48, and the small W18 "v2" of
humanpose.pytorch) differ only in those counts and widths, so one parametrised network covers them all and
a search can draw from the counts. Network, as deep-high-resolution-net.pytorch's pose_hrnet builds it:
- stem: two 3x3 stride-2 convs (`stem_width` channels, BN, ReLU) -> 1/4 resolution;
- stage 1 (`layer1`): `blocks` bottlenecks of `width` (output 4 x width, a 1x1 projection on the first);
- stages 2, 3, ... (`stage2`, ...): each a sequence of `modules` high-resolution modules over the stage's
  branches (branch i at 1/2**(i+2) resolution, `widths[i]` channels). A module runs `blocks` basic blocks
  on each branch, then fuses: every output branch i sums all branches, each brought to branch i's size
  (a higher-resolution j < i by i - j 3x3 stride-2 conv + BN, with ReLU between them; a lower-resolution
  j > i by a 1x1 conv + BN and nearest upsampling), then a ReLU;
- transitions (`transition1`, ...) before each of those stages: a 3x3 conv + BN + ReLU where a kept
  branch changes width, and for each new branch a chain of 3x3 stride-2 convs + BN + ReLU from the
  previous stage's lowest-resolution branch;
- the last module of the last stage fuses into the highest-resolution branch only (unless
  `multi_scale_output`), and a 1x1 conv with bias (`final_layer`) gives the K heatmaps at 1/4.
The attribute names are those of pose_hrnet and of HRNet-Image-Classification's cls_hrnet, so their
ImageNet checkpoints (hrnet_w32-36af842e.pth ...) load by name: `load_pretrained(path)`.

Genotype (human-readable):
    {"stem_width": 64,
     "stage1": {"blocks": 4, "width": 64},
     "stages": [{"modules": 1, "blocks": 4, "widths": [32, 64]},
                {"modules": 4, "blocks": 4, "widths": [32, 64, 128]},
                {"modules": 3, "blocks": [4, 4, 4, 4], "widths": [32, 64, 128, 256]}]}
`stages` lists 1 to 3 stages after stage 1; `blocks` is one count for every branch or a list with one
per branch. HRNet adds one branch per stage; a stage here may add more than one (each new branch is a
longer stride-2 chain from the lowest one), up to MAX_BRANCHES branches, so that e.g. two stages can
already end at 1/32. Widths need not double or stay the same from stage to stage (the transition
convs adapt them); `validate` checks the structure and the BOUNDS ranges, not the choice lists.

Sampling: `sample()` draws HRNet-shaped members: a number of stages from `num_stages_choices`, one base
width C from `base_width_choices` (branch i has C * 2**i channels, as in HRNet-W18/32/48), a module count
per stage from `module_choices[stage]`, a block count per branch from `block_choices`, and the stem and
stage 1 from their own lists. There are no architecture parameters and no weight sharing:
`supernet()` is the build of the largest member (every list's largest entry; `decode` returns it), so
gradient strategies and evolution refuse the space and random search samples it.

Feature extraction: `HRNet.features(x)` returns the last stage's branch outputs (highest resolution
first). With `multi_scale_output=True` the last module fuses into every branch, as the classification
HRNet does, so a genotype ending at stage 3 gives 3 maps (1/4, 1/8, 1/16), or 4 (to 1/32) when its
stages add branches faster; without it, features(x) holds the highest-resolution map only.

Differences from pose_hrnet, on purpose: the upsampling interpolates to the target branch's size
rather than by a fixed factor (same result when the input is divisible by 2**(branches+1); other sizes,
e.g. the 96x72 CPU default with 4 branches, still work); a kept branch whose width changes is read from
that branch, not the lowest one (pose_hrnet's forward does the latter, which no published config
triggers); backbone convs keep PyTorch's initialisation, the head gets `init_head`.

Sizes: the HRNet tables' GFLOPs are the pose repo's count, conv multiply-adds / 1024**3;
estimators.complexity.count_gflops (thop MACs / 1e9, BatchNorm included) reads about 8% higher for the same
network (x1.074 for the unit, +0.6-1.9% for BatchNorm). Parameters match the tables (genotypes/hrnet_*.json).
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import init_head
from nas.pose.pretrained import load_pretrained
from search_spaces.bounds import Bound, BoundError, check_args, check_value, is_int, is_list

MAX_BRANCHES = 4  # HRNet's resolutions 1/4 ... 1/32
MAX_STAGES = MAX_BRANCHES - 1  # after stage 1, each adding at least one branch

STEM = Bound(1, 256, "HRNet's stem is 64 wide; x4", "list")
STAGE1_WIDTH = Bound(1, 256, "HRNet's stage-1 bottleneck width is 64 (output 256); x4", "list")
STAGE1_BLOCKS = Bound(1, 16, "HRNet's stage 1 has 4 bottlenecks; x4", "list")
BRANCH_WIDTH = Bound(1, 1536, "HRNet-W48's lowest-resolution branch is 384 wide; x4", "list")
MODULES = Bound(1, 16, "HRNet-W32/W48's stage 3 has 4 modules; x4", "lists")
BLOCKS = Bound(1, 16, "HRNet's branches have 4 basic blocks per module; x4", "list")
# The range of every size argument (and of the genotype's counts and widths).
BOUNDS = {
    "stem_width_choices": STEM, "stage1_width_choices": STAGE1_WIDTH, "stage1_block_choices": STAGE1_BLOCKS,
    "base_width_choices": Bound(1, 192, "HRNet-W48's base width is 48; x4", "list"),
    "num_stages_choices": Bound(1, MAX_STAGES, "HRNet has 3 multi-branch stages (4 resolutions)", "list"),
    "module_choices": MODULES, "block_choices": BLOCKS,
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}
BOTTLENECK_EXPANSION = 4
# Parts of HRNet-Image-Classification checkpoints that the pose network has no place for.
CLASSIFICATION_ONLY = ("incre_modules", "downsamp_modules", "final_layer", "classifier")


# ---- the network -------------------------------------------------------------------------------

def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                               nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (input and output width equal, stride 1: all HRNet branches use)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), residual projected by a 1x1 conv + BN when the width changes."""

    def __init__(self, c_in: int, width: int):
        super().__init__()
        c_out = width * BOTTLENECK_EXPANSION
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(c_in, c_out, 1, 1, relu=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _fuse_layer(widths: list[int], i: int, j: int) -> nn.Module:
    """Branch j brought to branch i's width (and, in forward, its size); nn.Identity for j == i keeps
    the index of every entry where pose_hrnet has None."""
    if j == i:
        return nn.Identity()
    if j > i:  # lower resolution: 1x1 conv + BN, then nearest upsampling in forward
        return _conv_bn(widths[j], widths[i], 1, 1, relu=False)
    steps = i - j  # higher resolution: stride-2 3x3 convs, the last to branch i's width without ReLU
    return nn.Sequential(*[_conv_bn(widths[j], widths[i] if k == steps - 1 else widths[j], 3, 2,
                                    relu=k < steps - 1) for k in range(steps)])


class HighResolutionModule(nn.Module):
    """Basic blocks on each branch, then the multi-resolution fusion into every branch (or only the
    first, when `multi_scale_output` is False)."""

    def __init__(self, widths: list[int], blocks: list[int], multi_scale_output: bool):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(w) for _ in range(n)])
                                      for w, n in zip(widths, blocks))
        outputs = len(widths) if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(nn.ModuleList(_fuse_layer(widths, i, j) for j in range(len(widths)))
                                         for i in range(outputs))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j < i:
                    y = y + layer(xs[j])
                elif j > i:
                    y = y + F.interpolate(layer(xs[j]), size=xs[i].shape[-2:], mode="nearest")
            fused.append(self.relu(y))
        return fused


def _transition(previous: list[int], widths: list[int]) -> nn.ModuleList:
    """Kept branches: identity, or a 3x3 conv + BN + ReLU to a new width. New branch i: a chain of
    i + 1 - len(previous) stride-2 3x3 convs + BN + ReLU from the lowest previous branch."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        if i < len(previous):
            layers.append(nn.Identity() if width == previous[i] else _conv_bn(previous[i], width, 3, 1, True))
        else:
            steps, c = i + 1 - len(previous), previous[-1]
            layers.append(nn.Sequential(*[_conv_bn(c, width if k == steps - 1 else c, 3, 2, relu=True)
                                          for k in range(steps)]))
    return nn.ModuleList(layers)


def _per_branch(blocks: int | list[int], branches: int) -> list[int]:
    return [blocks] * branches if is_int(blocks) else list(blocks)


def _imagenet_key(key: str) -> str | None:
    """An HRNet-Image-Classification key as it is here; None for its classification head."""
    return None if key.split(".")[0] in CLASSIFICATION_ONLY else key


class HRNet(nn.Module):
    """(B, 3, H, W) -> (B, K, H/4, W/4). `genotype` is the genotype dict (module docstring)."""

    def __init__(self, genotype: dict[str, Any], num_keypoints: int, multi_scale_output: bool = False):
        super().__init__()
        stem, stage1, stages = genotype["stem_width"], genotype["stage1"], genotype["stages"]
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
        self.conv2, self.bn2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        c = stem
        blocks = []
        for _ in range(stage1["blocks"]):
            blocks.append(Bottleneck(c, stage1["width"]))
            c = stage1["width"] * BOTTLENECK_EXPANSION
        self.layer1 = nn.Sequential(*blocks)
        previous = [c]
        self.num_stages = len(stages)
        for s, stage in enumerate(stages):
            widths, last_stage = stage["widths"], s == len(stages) - 1
            branch_blocks = _per_branch(stage["blocks"], len(widths))
            setattr(self, f"transition{s + 1}", _transition(previous, widths))
            setattr(self, f"stage{s + 2}", nn.Sequential(*[
                HighResolutionModule(widths, branch_blocks,
                                     multi_scale_output or not (last_stage and m == stage["modules"] - 1))
                for m in range(stage["modules"])]))
            previous = widths
        self.final_layer = nn.Conv2d(previous[0], num_keypoints, 1)
        init_head(self.final_layer)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last stage's branch outputs, highest resolution (1/4) first; only that one unless the
        network was built with `multi_scale_output`."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]  # (B, 4 * stage-1 width, H/4, W/4)
        for s in range(self.num_stages):
            transition = getattr(self, f"transition{s + 1}")
            xs = [layer(ys[i] if i < len(ys) else ys[-1]) for i, layer in enumerate(transition)]
            ys = getattr(self, f"stage{s + 2}")(xs)
        return ys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.features(x)[0])  # (B, K, H/4, W/4)

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """Initialise the backbone from an HRNet-Image-Classification checkpoint (keys conv1 ... stage4
        map as they are; its classification head is skipped). Returns the loaded/missing/unused report."""
        return load_pretrained(self, path, rename=_imagenet_key, what="HRNet backbone")


# ---- the space ---------------------------------------------------------------------------------

def _field_error(where: str, detail: str) -> GenotypeError:
    return GenotypeError(f"field 'genotype{where}': {detail}")


def _check_keys(where: str, value: Any, keys: Sequence[str]) -> None:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise _field_error(where, f"must be an object with keys {sorted(keys)}, got {got}")


def _one(bound: Bound) -> Bound:
    """The bound of one value of a choice list."""
    return replace(bound, shape="int")


def _check(where: str, value: Any, bound: Bound) -> Any:
    try:
        return check_value(where, value, bound)
    except BoundError as err:
        raise GenotypeError(f"field 'genotype{err.key}': {err.detail}") from None


class HRNetSpace:
    """HRNet family. Defaults are CPU-sized; genotypes/hrnet_*.json hold the published networks with
    full-size choice lists in their space_args."""

    name = "hrnet"

    def __init__(self, stem_width_choices: Sequence[int] = (16,), stage1_width_choices: Sequence[int] = (8,),
                 stage1_block_choices: Sequence[int] = (1,), base_width_choices: Sequence[int] = (4, 8),
                 num_stages_choices: Sequence[int] = (1, 2, 3),
                 module_choices: Sequence[Sequence[int]] = ((1,), (1,), (1,)),
                 block_choices: Sequence[int] = (1,), num_keypoints: int = 17, multi_scale_output: bool = False):
        args = check_args(dict(stem_width_choices=stem_width_choices, stage1_width_choices=stage1_width_choices,
                               stage1_block_choices=stage1_block_choices, base_width_choices=base_width_choices,
                               num_stages_choices=num_stages_choices, module_choices=module_choices,
                               block_choices=block_choices, num_keypoints=num_keypoints), BOUNDS)
        if len(args["module_choices"]) < max(args["num_stages_choices"]):
            raise ValueError(f"module_choices lists {len(args['module_choices'])} stages but num_stages_choices "
                             f"allows {max(args['num_stages_choices'])}: give one list per stage")
        if not isinstance(multi_scale_output, bool):
            raise ValueError(f"multi_scale_output must be true or false, got {multi_scale_output!r}")
        self.args = {**args, "multi_scale_output": multi_scale_output}

    # -- members --
    def _genotype(self, genotype: dict[str, Any]) -> Genotype:
        return Genotype(space=self.name, space_args=dict(self.args), genotype=genotype)

    def _member(self, pick: Any) -> Genotype:
        """The member taking `pick(choices)` from every choice list (max: the largest member)."""
        a = self.args
        base = pick(a["base_width_choices"])
        stages = [{"modules": pick(a["module_choices"][s]), "blocks": [pick(a["block_choices"]) for _ in range(s + 2)],
                   "widths": [base * 2 ** i for i in range(s + 2)]} for s in range(pick(a["num_stages_choices"]))]
        return self._genotype({"stem_width": pick(a["stem_width_choices"]),
                               "stage1": {"blocks": pick(a["stage1_block_choices"]),
                                          "width": pick(a["stage1_width_choices"])},
                               "stages": stages})

    def largest(self) -> Genotype:
        return self._member(max)

    def supernet(self) -> nn.Module:
        return self.build(self.largest())

    def decode(self, supernet: nn.Module) -> Genotype:
        return self.largest()

    def sample(self, rng: random.Random) -> Genotype:
        return self._member(rng.choice)

    # -- checks and build --
    def validate(self, genotype: Genotype) -> None:
        g = genotype.genotype
        _check_keys("", g, ("stem_width", "stage1", "stages"))
        _check(".stem_width", g["stem_width"], _one(STEM))
        _check_keys(".stage1", g["stage1"], ("blocks", "width"))
        _check(".stage1.blocks", g["stage1"]["blocks"], _one(STAGE1_BLOCKS))
        _check(".stage1.width", g["stage1"]["width"], _one(STAGE1_WIDTH))
        stages = g["stages"]
        if not is_list(stages) or not 1 <= len(stages) <= MAX_STAGES:
            raise _field_error(".stages", f"must list 1 to {MAX_STAGES} stages after stage 1, got {stages!r}")
        branches = 1
        for s, stage in enumerate(stages):
            where = f".stages[{s}]"
            _check_keys(where, stage, ("modules", "blocks", "widths"))
            _check(f"{where}.modules", stage["modules"], _one(MODULES))
            widths = _check(f"{where}.widths", stage["widths"], BRANCH_WIDTH)
            if not branches < len(widths) <= MAX_BRANCHES:
                raise _field_error(f"{where}.widths", f"must have {branches + 1} to {MAX_BRANCHES} branches "
                                   f"(more than the previous stage's {branches}), got {len(widths)}")
            blocks = stage["blocks"]
            if is_list(blocks):
                _check(f"{where}.blocks", blocks, BLOCKS)
                if len(blocks) != len(widths):
                    raise _field_error(f"{where}.blocks", f"must give one count per branch ({len(widths)}), "
                                       f"got {len(blocks)}")
            else:
                _check(f"{where}.blocks", blocks, _one(BLOCKS))
            branches = len(widths)

    def build(self, genotype: Genotype) -> HRNet:
        self.validate(genotype)
        return HRNet(genotype.genotype, self.args["num_keypoints"], self.args["multi_scale_output"])
