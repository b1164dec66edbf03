"""One-level search (strategy.one_level, PNFS's "sync"): weights and architecture from one training loss."""
from __future__ import annotations

import copy
import functools
import json
import subprocess

import pytest
import torch

from nas.errors import UserError
from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import DartsCellsSpace
from strategies.darts import Darts
from tests.helpers import TINY_DATA, TINY_SPACE, module_cmd, run_env


def _batch(seed: int, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, size, size, generator=g),
            "target": torch.rand(2, 17, size // 4, size // 4, generator=g),
            "target_weight": torch.ones(2, 17, 1)}


def _darts_cells():
    return DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)


SPACES = {"darts_cells": _darts_cells}
try:  # the fabric space (issue 13), where it exists
    from search_spaces.fabric import FabricSpace  # noqa: F401
    from nas.spaces import build_space
    SPACES["fabric"] = lambda: build_space("fabric", {})
except ImportError:
    pass


def _strategy(space, unrolled: bool = False) -> Darts:
    return Darts(space, space.supernet(), KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=1.0, momentum=0.9),
                 functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=4,
                 one_level=True, unrolled=unrolled)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_one_step_moves_both_from_the_gradients_of_the_same_training_loss(name):
    """Adam's first step moves each alpha by lr * g / (|g| + eps) (bias-corrected moments g, g^2); SGD's
    first step (momentum buffer = g) moves each weight by lr * g (lr 1 here). Both g from the training batch's loss at
    the starting point, computed here on a copy; the held-out argument is ignored."""
    torch.manual_seed(0)
    s = _strategy(SPACES[name]())
    ref = copy.deepcopy(s.supernet)
    batch = _batch(0, 64 if name == "fabric" else 32)
    loss = KeypointMSELoss()(ref(batch["image"]), batch["target"], batch["target_weight"])
    g_alpha = torch.autograd.grad(loss, ref.arch_parameters(), retain_graph=True)
    g_weight = torch.autograd.grad(loss, ref.weight_parameters(), allow_unused=True)
    s.grad_clip = 1e9  # no clipping, so the weight move is exactly lr * g
    out = s.step(batch, {"image": None})  # a held-out batch would fail to run: it must not be used
    assert out["loss"] == pytest.approx(float(loss)) and out["arch_loss"] == pytest.approx(float(loss))
    for new, old, g in zip(s.alphas, ref.arch_parameters(), g_alpha):
        assert torch.allclose((old - new).detach(), 3e-3 * g / (g.abs() + 1e-8), rtol=1e-3, atol=1e-9)
    moved = 0
    for new, old, g in zip(s.weights, ref.weight_parameters(), g_weight):
        if g is not None:
            # new = old - g, to float32's rounding of weights of magnitude < 1 (a few 1e-8)
            assert torch.allclose(new.detach(), (old - g).detach(), rtol=0, atol=1e-7)
            moved += int(bool(g.abs().sum() > 0))
    assert moved > 0


def test_one_level_cannot_be_unrolled():
    with pytest.raises(UserError, match="nothing|no virtual step"):
        _strategy(_darts_cells(), unrolled=True)


@pytest.mark.slow
def test_a_one_level_search_trains_on_the_whole_training_set(tmp_path):
    proc = subprocess.run(module_cmd("nas.search", *TINY_DATA, *TINY_SPACE, "strategy=darts_one_level",
                                     "strategy.warmup_epochs=0", "epochs=1", "max_steps_per_epoch=2",
                                     f"run_dir={tmp_path / 'r'}"),
                          env=run_env(tmp_path / "cache"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training instances for weights and architecture (one-level)" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["arch_loss"] == metrics["loss"]  # one loss for both
