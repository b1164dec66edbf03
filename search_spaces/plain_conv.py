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
        self.args = dict(stem_channels=stem_channels, num_keypoints=num_keypoints)
        self.default_widths = [int(w) for w in widths]
        self.width_choices, self.max_layers = [int(w) for w in width_choices], int(max_layers)

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
        widths = genotype.genotype.get("widths")
        if set(genotype.genotype) != {"widths"} or not isinstance(widths, list) or not widths or not all(
                isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 4096 for w in widths):
            raise GenotypeError("field 'genotype' must be {\"widths\": [positive channel counts]}")

    def build(self, genotype: Genotype) -> nn.Module:
        self.validate(genotype)
        return PlainConvNet(self.args["stem_channels"], genotype.genotype["widths"], self.args["num_keypoints"])
