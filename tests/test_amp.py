"""Mixed precision (`amp=bf16|fp16`) on the CPU: what runs, what is refused, what the scaler keeps.

bf16 and fp16 autocast run on the CPU too (slowly), so the code paths a GPU takes are exercised here;
the speed is a GPU matter (benchmarks, not tests).
"""
from __future__ import annotations

import functools

import pytest
import torch

from nas.engine.precision import check_amp
from nas.errors import UserError
from nas.pose.loss import KeypointMSELoss


def _darts(amp, unrolled=False):
    from search_spaces.darts_cells import DartsCellsSpace
    from strategies.darts import Darts
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    return Darts(space, space.supernet(), KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                 functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=2, unrolled=unrolled,
                 amp=amp)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, 32, 32, generator=g), "target": torch.rand(2, 17, 8, 8, generator=g),
            "target_weight": torch.ones(2, 17, 1)}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_darts_step_in_half_precision_moves_both_weights_and_alphas_like_fp32(amp):
    full, half = _darts(None), _darts(amp)
    alphas0 = [a.detach().clone() for a in half.alphas]
    out_full = full.step(_batch(1), _batch(2))
    out_half = half.step(_batch(1), _batch(2))
    # the same start and batches: the losses differ only by rounding (bf16 keeps 8 bits of mantissa)
    assert out_half["loss"] == pytest.approx(out_full["loss"], rel=0.05)
    assert out_half["arch_loss"] == pytest.approx(out_full["arch_loss"], rel=0.05)
    moved = [not torch.equal(a, b) for a, b in zip(half.alphas, alphas0)]
    assert all(moved)
    assert all(torch.isfinite(a).all() for a in half.alphas)
    assert ("scaler" in half.state_dict()) == (amp == "fp16")  # only fp16 scales the loss


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_second_order_darts_refuses_half_precision(amp):
    with pytest.raises(UserError, match="finite-difference"):
        _darts(amp, unrolled=True)


def test_an_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="amp='fp8'"):
        check_amp("fp8", torch.device("cpu"))
    assert check_amp(None, torch.device("cpu")) is None


def test_the_fp16_scaler_skips_an_overflowing_step_instead_of_stopping():
    """A gradient that overflows fp16 (a loss of about 1e8, scaled x 65536: far above fp16's 65504) must not raise: the GradScaler
    skips that weight step and halves its scale, as mixed-precision training expects."""
    from nas.engine.train_loop import Trainer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 17, 4, stride=4))
    trainer = Trainer(model, lambda out, target, weight: (out.float() * 1e4).pow(2).mean(),
                      torch.optim.SGD(model.parameters(), lr=0.1), 1, 1, torch.device("cpu"), amp="fp16")
    before = [p.detach().clone() for p in model.parameters()]
    scale = trainer.scaler.get_scale()
    batch = {"image": torch.randn(2, 3, 32, 32), "target": torch.zeros(2, 17, 8, 8),
             "target_weight": torch.ones(2, 17, 1)}
    trainer._step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step was skipped
    assert trainer.scaler.get_scale() == scale / 2
