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
"""
from __future__ import annotations

import copy
import itertools
import math
import random
from typing import Any, Callable, Sequence

import torch
from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.vipnas_head import ViPNASHead
from search_spaces.elastic import (ElasticBatchNorm2d, ElasticConv2d, ElasticViPNASHead, attention_dict,
                                   inherit_weights)
from search_spaces.vipnas_nets import ElasticPoseNet, ElasticStem, Path, PoseNet, Stem

ATTENTIONS = ("none", "se", "gc")
SE_GATE = "sigmoid"  # the ResNet family's SE blocks gate with a sigmoid


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


# ---- the space: choices, sampling, validation, build; shared with the MobileNetV3 family ---------

def _ints(values: Sequence[Any]) -> list[int]:
    return [int(v) for v in values]


def _choice_error(where: str, value: Any, choices: Sequence[Any]) -> GenotypeError:
    return GenotypeError(f"field 'genotype.{where}': {value!r} is not one of {list(choices)}")


def _check(where: str, value: Any, choices: Sequence[Any]) -> None:
    if isinstance(value, (bool, float)) or value not in choices:
        raise _choice_error(where, value, choices)


def _check_keys(where: str, value: Any, keys: Sequence[str]) -> None:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise GenotypeError(f"field 'genotype{where}' must be an object with keys {list(keys)}, got {got}")


class ViPNASResNetSpace:
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
        self.args: dict[str, Any] = dict(
            stem_width_choices=_ints(stem_width_choices),
            width_choices=[_ints(w) for w in width_choices], depth_choices=[_ints(d) for d in depth_choices],
            kernel_choices=_ints(kernel_choices), group_choices=_ints(group_choices),
            attention_choices=[str(a) for a in attention_choices], strides=_ints(strides),
            expansion=int(expansion), head_channel_choices=_ints(head_channel_choices),
            head_group_choices=_ints(head_group_choices), num_keypoints=int(num_keypoints))
        self._check_args()

    # -- family specifics (overridden by the MobileNetV3 family) --
    def spatial_channels(self, stage: dict[str, Any]) -> int:
        """Channels of the stage's k x k conv (the ones its groups split)."""
        return stage["width"]

    def out_channels(self, stage: dict[str, Any]) -> int:
        return stage["width"] * self.args["expansion"]

    def stage_choices(self, i: int) -> dict[str, list]:
        a = self.args
        return dict(depth=a["depth_choices"][i], width=a["width_choices"][i], kernel=a["kernel_choices"],
                    attention=a["attention_choices"])

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

    # -- shared machinery --
    @property
    def num_stages(self) -> int:
        return len(self.args["strides"])

    @property
    def num_deconv(self) -> int:
        """Deconvs (x2 each) from the backbone's output stride up to the heatmaps' stride 4."""
        return int(math.log2(self.stem_stride * math.prod(self.args["strides"]))) - 2

    def _check_args(self) -> None:
        a = self.args
        total = self.stem_stride * math.prod(a["strides"])
        if any(s not in (1, 2) for s in a["strides"]) or total < 4:
            raise ValueError(f"strides must be 1 or 2 (total stride >= 4), got {a['strides']}")
        for key in ("width_choices", "depth_choices"):
            if len(a[key]) != self.num_stages or not all(a[key]):
                raise ValueError(f"{key} must give a non-empty list per stage ({self.num_stages} stages)")
        if any(k % 2 == 0 for k in a["kernel_choices"]):
            raise ValueError(f"kernel_choices must be odd (a smaller kernel is the centre of the larger), "
                             f"got {a['kernel_choices']}")
        unknown = set(a["attention_choices"]) - set(ATTENTIONS)
        if unknown or not a["attention_choices"]:
            raise ValueError(f"attention_choices must be taken from {list(ATTENTIONS)}, got {a['attention_choices']}")
        self._check_groups()

    def _check_groups(self) -> None:
        """Every width the space can draw must admit a group count (else sampling could not go on)."""
        a = self.args
        for i in range(self.num_stages):
            choices = self.stage_choices(i)
            keys = [k for k in ("width", "expansion") if k in choices]
            for values in itertools.product(*(choices[k] for k in keys)):
                self._groups_for(self.spatial_channels(dict(zip(keys, values))), a["group_choices"])
        if self.num_deconv == 0:
            return
        last = self.stage_choices(self.num_stages - 1)
        outs = {self.out_channels(dict(width=w, expansion=e)) for w in last["width"]
                for e in last.get("expansion", [1])}
        for c_in in outs | set(a["head_channel_choices"]):
            for c in a["head_channel_choices"]:
                self._groups_for(c, a["head_group_choices"], c_in)

    def _groups_for(self, channels: int, choices: Sequence[int], *also: int) -> list[int]:
        options = [g for g in choices if all(c % g == 0 for c in (channels, *also))]
        if not options:
            raise ValueError(f"none of the group choices {list(choices)} divides {channels} channels")
        return options

    def _genotype(self, path: Path) -> Genotype:
        return Genotype(space=self.name, space_args=copy.deepcopy(self.args), genotype=path)

    def largest(self) -> Path:
        """The biggest member: max depth/width/kernel (/expansion), fewest groups, last attention."""
        a = self.args
        stages = []
        for i in range(self.num_stages):
            stage = {k: (v[-1] if k == "attention" else max(v)) for k, v in self.stage_choices(i).items()}
            stage["groups"] = min(self._groups_for(self.spatial_channels(stage), a["group_choices"]))
            stages.append({k: stage[k] for k in self.stage_fields})
        stem = {"width": max(a["stem_width_choices"]), "kernel": max(a["kernel_choices"])}
        return {"stem": stem, "stages": stages, "head": self._pick_head(self.out_channels(stages[-1]), max, min)}

    def smallest(self) -> Path:
        """The cheapest member (the sandwich rule's lower end): min depth/width/kernel (/expansion),
        most groups, the first attention choice."""
        a = self.args
        stages = []
        for i in range(self.num_stages):
            stage = {k: (v[0] if k == "attention" else min(v)) for k, v in self.stage_choices(i).items()}
            stage["groups"] = max(self._groups_for(self.spatial_channels(stage), a["group_choices"]))
            stages.append({k: stage[k] for k in self.stage_fields})
        stem = {"width": min(a["stem_width_choices"]), "kernel": min(a["kernel_choices"])}
        return {"stem": stem, "stages": stages, "head": self._pick_head(self.out_channels(stages[-1]), min, max)}

    def _pick_head(self, c_in: int, pick_width: Callable, pick_groups: Callable) -> dict[str, list[int]]:
        channels, groups = [], []
        for _ in range(self.num_deconv):
            channels.append(pick_width(self.args["head_channel_choices"]))
            groups.append(pick_groups(self._groups_for(channels[-1], self.args["head_group_choices"], c_in)))
            c_in = channels[-1]
        return {"deconv_channels": channels, "deconv_groups": groups}

    def sample(self, rng: random.Random) -> Genotype:
        """Uniform over every choice; group counts uniform over those dividing the channels."""
        a = self.args
        stem = {"width": rng.choice(a["stem_width_choices"]), "kernel": rng.choice(a["kernel_choices"])}
        stages = []
        for i in range(self.num_stages):
            stage = {k: rng.choice(v) for k, v in self.stage_choices(i).items()}
            stage["groups"] = rng.choice(self._groups_for(self.spatial_channels(stage), a["group_choices"]))
            stages.append({k: stage[k] for k in self.stage_fields})
        head = self._pick_head(self.out_channels(stages[-1]), rng.choice, rng.choice)
        return self._genotype({"stem": stem, "stages": stages, "head": head})

    def validate(self, genotype: Genotype) -> None:
        g = genotype.genotype
        _check_keys("", g, ("stem", "stages", "head"))
        _check_keys(".stem", g["stem"], ("width", "kernel"))
        _check("stem.width", g["stem"]["width"], self.args["stem_width_choices"])
        _check("stem.kernel", g["stem"]["kernel"], self.args["kernel_choices"])
        if not isinstance(g["stages"], list) or len(g["stages"]) != self.num_stages:
            raise GenotypeError(f"field 'genotype.stages' must list {self.num_stages} stages")
        for i, stage in enumerate(g["stages"]):
            self._validate_stage(i, stage)
        self._validate_head(g["head"], self.out_channels(g["stages"][-1]))

    def _validate_stage(self, i: int, stage: Any) -> None:
        where = f"stages[{i}]"
        _check_keys("." + where, stage, self.stage_fields)
        for key, choices in self.stage_choices(i).items():
            _check(f"{where}.{key}", stage[key], choices)
        _check(f"{where}.groups", stage["groups"], self.args["group_choices"])
        channels = self.spatial_channels(stage)
        if channels % stage["groups"]:
            raise GenotypeError(f"field 'genotype.{where}.groups': {stage['groups']} does not divide the "
                                f"{channels} channels of the stage's k x k conv")

    def _validate_head(self, head: Any, c_in: int) -> None:
        _check_keys(".head", head, ("deconv_channels", "deconv_groups"))
        for key in ("deconv_channels", "deconv_groups"):
            if not isinstance(head[key], list) or len(head[key]) != self.num_deconv:
                raise GenotypeError(f"field 'genotype.head.{key}' must list {self.num_deconv} values "
                                    f"(one per x2 deconv)")
        for j, (c, g) in enumerate(zip(head["deconv_channels"], head["deconv_groups"])):
            _check(f"head.deconv_channels[{j}]", c, self.args["head_channel_choices"])
            _check(f"head.deconv_groups[{j}]", g, self.args["head_group_choices"])
            if c % g or c_in % g:
                raise GenotypeError(f"field 'genotype.head.deconv_groups[{j}]': {g} does not divide "
                                    f"both {c_in} input and {c} output channels")
            c_in = c

    def _head(self, c_in: int, path: Path) -> ViPNASHead:
        head = path["head"]
        return ViPNASHead(c_in, head["deconv_channels"], head["deconv_groups"], self.args["num_keypoints"])

    def supernet(self) -> ElasticPoseNet:
        return self._make_supernet(self.largest())

    def decode(self, supernet: nn.Module) -> Genotype:
        """The supernet's active member (its set path, else the largest): no architecture weights here."""
        path = getattr(supernet, "path", None)
        return self._genotype(copy.deepcopy(path) if path is not None else self.largest())

    def build(self, genotype: Genotype, supernet: nn.Module | None = None) -> nn.Module:
        """The standalone network; with `supernet`, it starts from that member's shared weights."""
        self.validate(genotype)
        net = self._make_net(genotype.genotype)
        return inherit_weights(net, supernet) if supernet is not None else net
