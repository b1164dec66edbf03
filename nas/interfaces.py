"""The contracts between the parts, on one screen.

A search space describes a family of pose networks, a strategy searches it, estimators score
candidates; the result is a `Genotype` (nas/genotype.py) that `SearchSpace.build` turns into a
standalone network. Every network maps images (B, 3, H, W) to heatmaps (B, K, H/4, W/4).
"""
from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from nas.genotype import Genotype


@runtime_checkable
class SearchSpace(Protocol):
    name: str  # the config name in conf/search_space/, written into genotype files

    def supernet(self) -> nn.Module:
        """A network holding every candidate. For gradient strategies it exposes `arch_parameters()`
        and `weight_parameters()` (architecture params apart from weights) and may expose
        `arch_weights()` ({name: softmaxed tensor}, saved every epoch for trajectory plots). For
        one-shot strategies it exposes `set_path(genotype | None)`: forward then runs only that
        member from the shared weights (None: back to the whole supernet)."""

    def sample(self, rng: random.Random) -> Genotype:
        """A uniformly random member of the space (random search, evolution)."""

    def decode(self, supernet: nn.Module) -> Genotype:
        """The supernet's current best choice (e.g. the argmax of the architecture weights)."""

    def build(self, genotype: Genotype) -> nn.Module:
        """The standalone network: no architecture params, no unused ops."""

    def validate(self, genotype: Genotype) -> None:
        """Raise `GenotypeError` naming the field when the genotype is not a member of the space."""


class Strategy(Protocol):
    """Owns its optimizers and schedulers (second-order DARTS needs the weight optimizer's state).

    Built with `space, supernet, criterion, epochs, steps_per_epoch` plus its config; a constructor
    that names `accuracy` gets the held-out pose-accuracy estimator (estimators/accuracy.py), one
    that names `seed` the run's seed. An optional `schedule() -> (epochs, steps_per_epoch)` replaces
    the run's own (random search runs one epoch per candidate). `end_epoch` runs before `result`.
    """

    def step(self, train_batch: dict[str, Any], val_batch: dict[str, Any]) -> dict[str, float]: ...
    def result(self) -> Genotype: ...
    def end_epoch(self) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Estimator(Protocol):
    def __call__(self, model: nn.Module, genotype: Genotype) -> dict[str, float]:
        """Scores, e.g. {"params_M": 1.2, "GFLOPs": 0.4} or {"latency_ms": 4.2}."""


Batch = dict[str, torch.Tensor]
