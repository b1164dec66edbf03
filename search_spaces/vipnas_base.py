"""What both ViPNAS spatial-level spaces share: the choice lists, their bounds, sampling, the
largest and smallest members, validation, and the standalone/supernet build.

A family (search_spaces/vipnas_resnet.py, search_spaces/vipnas_mbv3.py) subclasses `ViPNASSpace`
and supplies its block: `spatial_channels` / `out_channels` of a stage, `_make_net` (the
standalone network) and `_make_supernet` (the elastic one), plus `name`, `stage_fields` and
`stem_stride`. The genotype format is described in the family files.
"""
from __future__ import annotations

import copy
import itertools
import math
import random
from typing import Any, Callable, Sequence

from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.vipnas_head import ViPNASHead
from search_spaces.bounds import Bound, check_args, is_list
from search_spaces.elastic import inherit_weights
from search_spaces.vipnas_nets import ElasticPoseNet, Path, PoseNet

ATTENTIONS = ("none", "se", "gc")
MAX_STAGES = 8  # ResNet and S-ViPNAS-Res50 have 4 stages, S-ViPNAS-MobileNetV3 6

# Size arguments both families take, with their maxima (the published value x a margin). The
# genotype's values must be taken from these lists, so these bound the genotype too.
COMMON_BOUNDS = {
    "stem_width_choices": Bound(1, 256, "ResNet's stem is 64 wide (S-ViPNAS-Res50's choices: 32-64); x4", "list"),
    "width_choices": Bound(1, 4096, "ResNet-152's widest block output is 2048 (S-ViPNAS-Res50's widest "
                                    "stage 704, HRNet-W48's branch 384); x2", "lists"),
    "depth_choices": Bound(1, 64, "ResNet-152's third stage has 36 blocks (S-ViPNAS-Res50's: 7)", "lists"),
    "kernel_choices": Bound(1, 15, "S-ViPNAS uses up to 7x7; x2", "list"),
    "group_choices": Bound(1, 4096, "at most the widest k x k conv", "list"),
    "strides": Bound(1, 2, "each stage keeps (1) or halves (2) the resolution", "list"),
    "head_channel_choices": Bound(1, 1024, "SimpleBaseline's deconvs are 256 wide (S-ViPNAS: 144, 160); x4", "list"),
    "head_group_choices": Bound(1, 1024, "at most the widest deconv", "list"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}


def choice_error(where: str, value: Any, choices: Sequence[Any]) -> GenotypeError:
    return GenotypeError(f"field 'genotype.{where}': {value!r} is not one of {list(choices)}")


def check_choice(where: str, value: Any, choices: Sequence[Any]) -> None:
    if isinstance(value, (bool, float)) or value not in choices:
        raise choice_error(where, value, choices)


def check_keys(where: str, value: Any, keys: Sequence[str]) -> None:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise GenotypeError(f"field 'genotype{where}' must be an object with keys {list(keys)}, got {got}")


def names(key: str, values: Any, allowed: Sequence[str]) -> list[str]:
    """A list of names, each one of `allowed` (ValueError naming `key` otherwise)."""
    if not is_list(values) or not values or any(v not in allowed for v in values):
        raise ValueError(f"{key} must be a non-empty list taken from {list(allowed)}, got {values!r}")
    return [str(v) for v in values]


class ViPNASSpace:
    """The elastic ViPNAS space, family-independent. `self.args` holds the checked arguments."""

    name: str
    stage_fields: tuple[str, ...]
    stem_stride: int

    def __init__(self, args: dict[str, Any], bounds: dict[str, Bound]):
        self.args = check_args(args, bounds)
        self.args["attention_choices"] = names("attention_choices", args["attention_choices"], ATTENTIONS)
        self._check_args()

    # -- family specifics --
    def spatial_channels(self, stage: dict[str, Any]) -> int:
        """Channels of the stage's k x k conv (the ones its groups split)."""
        raise NotImplementedError

    def out_channels(self, stage: dict[str, Any]) -> int:
        raise NotImplementedError

    def _make_net(self, path: Path) -> PoseNet:
        raise NotImplementedError

    def _make_supernet(self, big: Path) -> ElasticPoseNet:
        raise NotImplementedError

    def stage_choices(self, i: int) -> dict[str, list]:
        a = self.args
        return dict(depth=a["depth_choices"][i], width=a["width_choices"][i], kernel=a["kernel_choices"],
                    attention=a["attention_choices"])

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
        if len(a["strides"]) > MAX_STAGES:
            raise ValueError(f"strides: {len(a['strides'])} stages, at most {MAX_STAGES} allowed")
        if self.stem_stride * math.prod(a["strides"]) < 4:
            raise ValueError(f"strides must give a total stride >= 4 (heatmaps are at 1/4), got {a['strides']}")
        for key in ("width_choices", "depth_choices"):
            if len(a[key]) != self.num_stages:
                raise ValueError(f"{key} must give a non-empty list per stage ({self.num_stages} stages)")
        if any(k % 2 == 0 for k in a["kernel_choices"]):
            raise ValueError(f"kernel_choices must be odd (a smaller kernel is the centre of the larger), "
                             f"got {a['kernel_choices']}")
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

    def _extreme(self, pick: Callable, first_attention: bool, pick_groups: Callable) -> Path:
        a = self.args
        stages = []
        for i in range(self.num_stages):
            stage = {k: (v[0 if first_attention else -1] if k == "attention" else pick(v))
                     for k, v in self.stage_choices(i).items()}
            stage["groups"] = pick_groups(self._groups_for(self.spatial_channels(stage), a["group_choices"]))
            stages.append({k: stage[k] for k in self.stage_fields})
        stem = {"width": pick(a["stem_width_choices"]), "kernel": pick(a["kernel_choices"])}
        head = self._pick_head(self.out_channels(stages[-1]), pick, pick_groups)
        return {"stem": stem, "stages": stages, "head": head}

    def largest(self) -> Path:
        """The biggest member: max depth/width/kernel (/expansion), fewest groups, last attention."""
        return self._extreme(max, False, min)

    def smallest(self) -> Path:
        """The cheapest member (the sandwich rule's lower end): min depth/width/kernel (/expansion),
        most groups, the first attention choice."""
        return self._extreme(min, True, max)

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
        check_keys("", g, ("stem", "stages", "head"))
        check_keys(".stem", g["stem"], ("width", "kernel"))
        check_choice("stem.width", g["stem"]["width"], self.args["stem_width_choices"])
        check_choice("stem.kernel", g["stem"]["kernel"], self.args["kernel_choices"])
        if not isinstance(g["stages"], list) or len(g["stages"]) != self.num_stages:
            raise GenotypeError(f"field 'genotype.stages' must list {self.num_stages} stages")
        for i, stage in enumerate(g["stages"]):
            self._validate_stage(i, stage)
        self._validate_head(g["head"], self.out_channels(g["stages"][-1]))

    def _validate_stage(self, i: int, stage: Any) -> None:
        where = f"stages[{i}]"
        check_keys("." + where, stage, self.stage_fields)
        for key, choices in self.stage_choices(i).items():
            check_choice(f"{where}.{key}", stage[key], choices)
        check_choice(f"{where}.groups", stage["groups"], self.args["group_choices"])
        channels = self.spatial_channels(stage)
        if channels % stage["groups"]:
            raise GenotypeError(f"field 'genotype.{where}.groups': {stage['groups']} does not divide the "
                                f"{channels} channels of the stage's k x k conv")

    def _validate_head(self, head: Any, c_in: int) -> None:
        check_keys(".head", head, ("deconv_channels", "deconv_groups"))
        for key in ("deconv_channels", "deconv_groups"):
            if not isinstance(head[key], list) or len(head[key]) != self.num_deconv:
                raise GenotypeError(f"field 'genotype.head.{key}' must list {self.num_deconv} values "
                                    f"(one per x2 deconv)")
        for j, (c, g) in enumerate(zip(head["deconv_channels"], head["deconv_groups"])):
            check_choice(f"head.deconv_channels[{j}]", c, self.args["head_channel_choices"])
            check_choice(f"head.deconv_groups[{j}]", g, self.args["head_group_choices"])
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
