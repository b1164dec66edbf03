"""nas.engine.guards.check_finite_grads: stops on a NaN or inf gradient entry, and only then."""
from __future__ import annotations

import pytest
import torch

from nas.engine.guards import NonFiniteLossError, check_finite_grads


def _param(grad: list[float], dtype: torch.dtype = torch.float32) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(len(grad), dtype=dtype))
    p.grad = torch.tensor(grad, dtype=dtype)
    return p


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_entry_among_finite_ones_stops(bad):
    params = [_param([1.0, 2.0]), _param([3.0, bad, 4.0]), _param([5.0])]
    with pytest.raises(NonFiniteLossError, match="gradient of the net"):
        check_finite_grads(params, "net", 7)


def test_large_finite_float32_gradients_pass():
    # 1e20 ** 2 = 1e40 is past float32's largest value (3.4e38): a 2-norm of these finite entries
    # overflows to inf, yet no entry is non-finite, so the step must go ahead.
    check_finite_grads([_param([1e20, 1.0]), _param([3e38])], "net", 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_every_float_dtype_is_checked(dtype):
    check_finite_grads([_param([1.0, -2.0], dtype), _param([0.5])], "net", 0)
    with pytest.raises(NonFiniteLossError):
        check_finite_grads([_param([1.0, float("nan")], dtype), _param([0.5])], "net", 0)


def test_params_without_gradients_or_elements_are_skipped():
    empty = torch.nn.Parameter(torch.zeros(0))
    empty.grad = torch.zeros(0)
    check_finite_grads([torch.nn.Parameter(torch.zeros(2)), empty, _param([1.0])], "net", 0)
    check_finite_grads([], "net", 0)
