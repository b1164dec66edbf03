"""The CUDA path: the same code on a GPU (skipped on machines without one)."""
from __future__ import annotations

import functools

import pytest
import torch

from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import DartsCellsSpace
from strategies.darts import Darts

pytestmark = pytest.mark.gpu


def test_darts_step_on_cuda_matches_cpu_shapes_and_moves_alphas():
    device = torch.device("cuda")
    space = DartsCellsSpace(init_channels=4, layers=3, steps=2, reductions=1)
    supernet = space.supernet().to(device)
    strategy = Darts(space, supernet, KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=1.0),
                     functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1)
    batch = {"image": torch.randn(2, 3, 64, 48, device=device),
             "target": torch.rand(2, 17, 16, 12, device=device),
             "target_weight": torch.ones(2, 17, 1, device=device)}
    before = [a.detach().clone() for a in supernet.arch_parameters()]
    out = strategy.step(batch, batch)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, supernet.arch_parameters()))
    space.validate(strategy.result())
