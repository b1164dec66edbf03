"""DARTS stops on a non-finite gradient or loss before any optimizer step, with the weights, the
architecture parameters and both optimizers' states exactly as they were before the step.

A finite loss can still have a NaN gradient: the tests make one with a tensor hook that replaces
the gradient of one parameter by NaN at a chosen call, so the loss itself stays finite.
"""
from __future__ import annotations

import copy

import pytest
import torch

from nas.engine.guards import NonFiniteLossError
from strategies.darts import Darts
from tests.helpers import NaNAfter
from tests.test_darts import _batch, _strategy


def _snapshot(s: Darts) -> dict:
    return copy.deepcopy({"weights": [w.detach() for w in s.weights],
                          "alphas": [a.detach() for a in s.alphas], "state": s.state_dict()})


def _assert_same(a, b, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts / lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _nan_at_call(param: torch.Tensor, nth: int) -> None:
    """From now on, the `nth` gradient computed for `param` is NaN (the others pass unchanged)."""
    calls = [0]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return torch.full_like(grad, float("nan")) if calls[0] == nth else grad
    param.register_hook(hook)


# Which gradient computation of the failing step is NaN. A weight's gradient is computed by the
# virtual step (1st) and the validation gradient at w' (2nd); an alpha's by the validation gradient
# (1st) and the two Hessian-vector probes w + eps v (2nd), w - eps v (3rd). First order: the weight
# step (warmup, so no architecture step runs first) or the architecture step.
CASES = {
    "first order, weight step": (False, 1.0, "weight", 1, "gradient of the training loss"),
    "first order, arch step": (False, 0.0, "alpha", 1, "gradient of the architecture loss"),
    "second order, virtual step": (True, 0.0, "weight", 1, "weight gradient of the virtual step"),
    "second order, dL_val/dw'": (True, 0.0, "weight", 2, r"architecture \(validation\) loss"),
    "second order, dL_val/dalpha": (True, 0.0, "alpha", 1, r"architecture \(validation\) loss"),
    "second order, probe w+eps v": (True, 0.0, "alpha", 2, "Hessian-vector product"),
    "second order, probe w-eps v": (True, 0.0, "alpha", 3, "Hessian-vector product"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_nan_gradient_of_a_finite_loss_stops_before_any_update(case):
    unrolled, warmup, which, nth, message = CASES[case]
    s = _strategy(unrolled=unrolled, warmup_epochs=warmup)
    s.step(_batch(0), _batch(1))  # a good step first: momentum and Adam states are not empty
    _nan_at_call(s.weights[0] if which == "weight" else s.alphas[0], nth)
    before = _snapshot(s)
    with pytest.raises(NonFiniteLossError, match=message):
        s.step(_batch(2), _batch(3))
    _assert_same(before, _snapshot(s))


# NaNAfter counts loss calls. A second-order step calls it 5 times: virtual step, validation at w',
# the probes w + eps v and w - eps v, the weight step. The first step uses calls 1-5.
LOSS_CASES = {6: "training loss of the virtual step", 7: r"architecture \(validation\) loss is nan",
              8: "Hessian-vector product", 9: "Hessian-vector product"}


@pytest.mark.parametrize("nan_call", list(LOSS_CASES))
def test_second_order_a_nan_loss_leaves_the_weights_restored(nan_call):
    """In particular a NaN validation loss after the virtual step (call 7): the weights are at w'
    then, and must be put back before the error leaves the step."""
    s = _strategy(criterion=NaNAfter(after=nan_call - 1), unrolled=True)
    s.step(_batch(0), _batch(1))
    before = _snapshot(s)
    with pytest.raises(NonFiniteLossError, match=LOSS_CASES[nan_call]):
        s.step(_batch(2), _batch(3))
    _assert_same(before, _snapshot(s))


@pytest.mark.parametrize("unrolled", [False, True])
def test_an_arch_step_that_overflows_the_alphas_is_undone(unrolled):
    # Finite gradients, but a step that overflows: Adam at lr = inf moves every alpha to +-inf
    # (NaN where the gradient is 0). It stands for any step past float32's range.
    s = _strategy(unrolled=unrolled, arch_lr=float("inf"))
    before = _snapshot(s)
    with pytest.raises(NonFiniteLossError, match="architecture parameter after its step"):
        s.step(_batch(0), _batch(1))
    _assert_same(before, _snapshot(s))  # Adam's moments too: its state is still empty


def test_second_order_arch_step_leaves_the_weights_bit_identical():
    """The virtual step and the finite-difference probes move the weights; the architecture step
    must hand them back exactly (w + eps v - 2 eps v + eps v is not w in floating point)."""
    s = _strategy(unrolled=True)
    s.step(_batch(0), _batch(1))
    weights = [w.detach().clone() for w in s.weights]
    s._arch_step(_batch(2), _batch(3))
    _assert_same(weights, [w.detach() for w in s.weights])
