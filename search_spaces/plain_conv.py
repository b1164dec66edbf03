"""A deliberately plain baseline: a stride-4 stem and a few 3x3 convs, no multi-scale features.

It is the "weak model" the README compares against (the gap shows the built-in data is not
saturated), and the smallest example of a space. Genotype: {"widths": [c1, c2, ...]}, the
channels of the 3x3 conv layers after the stem. There are no architecture parameters, so
gradient strategies reject it; `sample` draws widths for random search.
"""
from __future__ import annotations

import random

from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import HeatmapHead
from search_spaces.bounds import Bound, BoundError, check_args, check_value

# The range of every size argument (and of the genotype's widths): published value x a margin.
WIDTH = Bound(1, 4096, "ResNet-152's widest block output is 2048; x2", "list")
BOUNDS = {
    "stem_channels": Bound(1, 256, "ResNet's stem is 64 wide; x4"),
    "widths": WIDTH, "width_choices": WIDTH,  # a list holds at most 64 layers (bounds.MAX_CHOICES)
    "max_layers": Bound(1, 64, "ResNet-152 has 50 blocks"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class PlainConvNet(nn.Sequential):
    """(B, 3, H, W) -> (B, K, H/4, W/4)."""

    def __init__(self, stem_channels: int, widths: list[int], num_keypoints: int):
        layers = _conv(3, stem_channels, 2) + _conv(stem_channels, stem_channels, 2)
        c = stem_channels
        for width in widths:
            layers += _conv(c, width, 1)
            c = width
        super().__init__(*layers, HeatmapHead(c, num_keypoints))


class PlainConvSpace:
    name = "plain_conv"

    def __init__(self, stem_channels: int = 16, widths: list[int] = (32, 32, 32),
                 width_choices: list[int] = (16, 32, 64), max_layers: int = 4, num_keypoints: int = 17):
        args = check_args(dict(stem_channels=stem_channels, widths=widths, width_choices=width_choices,
                               max_layers=max_layers, num_keypoints=num_keypoints), BOUNDS)
        self.args = dict(stem_channels=stem_channels, num_keypoints=num_keypoints)
        self.default_widths, self.width_choices = args["widths"], args["width_choices"]
        self.max_layers = max_layers

    def _genotype(self, widths: list[int]) -> Genotype:
        return Genotype(space=self.name, space_args=dict(self.args), genotype={"widths": widths})

    def supernet(self) -> nn.Module:
        return self.build(self._genotype(self.default_widths))

    def decode(self, supernet: nn.Module) -> Genotype:
        return self._genotype(self.default_widths)

    def sample(self, rng: random.Random) -> Genotype:
        depth = rng.randint(1, self.max_layers)
        return self._genotype([rng.choice(self.width_choices) for _ in range(depth)])

    def validate(self, genotype: Genotype) -> None:
        if not isinstance(genotype.genotype, dict) or set(genotype.genotype) != {"widths"}:
            raise GenotypeError("field 'genotype' must be {\"widths\": [channel counts]}")
        try:
            check_value("widths", genotype.genotype["widths"], WIDTH)
        except BoundError as err:
            raise GenotypeError(f"field 'genotype.{err.key}': {err.detail}") from None

    def build(self, genotype: Genotype) -> nn.Module:
        self.validate(genotype)
        return PlainConvNet(self.args["stem_channels"], genotype.genotype["widths"], self.args["num_keypoints"])
