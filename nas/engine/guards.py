"""Stop a run on a non-finite loss or gradient before the bad step touches the weights.

Every optimizer step in the project goes through `check_finite` (the loss) and `check_finite_grads`
(the gradients that step is about to apply): a finite loss can still give a NaN/inf gradient, and
`clip_grad_norm_` would then spread it over every weight and the next checkpoint would hold NaNs.
Raising before the step keeps the weights and the last checkpoint on disk intact; the entry points
turn the error into exit status 3.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or infinite; the last checkpoint on disk is the last good state."""


def _stop(what: str, value: float, step: int) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"{what} is {value} at step {step}. The weights were not updated and the last "
        "checkpoint is intact; lower the learning rate or check the data, then resume.")


def check_finite(loss: torch.Tensor, what: str, step: int, agreed: bool = False) -> float:
    """This process's loss value; raises if it, or (under torch.distributed) any rank's, is not finite.

    Every rank stops at the same step: a rank that raised alone would leave the others waiting in their
    next gradient all-reduce until the process group's timeout. Call it where all ranks pass together.
    `agreed=True`: `loss` is already the same on every rank (e.g. the all-reduced mean, non-finite when
    any rank's loss is), so no collective is needed."""
    value = float(loss.detach())
    finite = math.isfinite(value)
    from nas.engine import distributed
    if distributed.world().enabled and not agreed:
        elsewhere = distributed.any_rank(not finite, loss.device)
        if elsewhere and finite:
            raise _stop(f"{what} (on another rank)", float("nan"), step)
    if not finite:
        raise _stop(what, value, step)
    return value


def _largest_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The largest |entry| over `tensors`: non-finite exactly when one entry is, and one reduction
    (one device sync) for all of them. A 2-norm would overflow to inf on finite float32 entries above
    ~1e19."""
    return torch.stack([torch.linalg.vector_norm(t.detach(), ord=math.inf).double() for t in tensors]).amax()


def check_finite_grads(params: Iterable[torch.Tensor], what: str, step: int) -> None:
    """Raise if any gradient of `params` (those that have one) holds a NaN or an inf."""
    grads = [p.grad for p in params if p.grad is not None and p.grad.numel()]  # inf-norm: not of []
    if grads and not torch.isfinite(total := _largest_abs(grads)):
        raise _stop(f"a gradient of the {what}", float(total), step)


def check_finite_tensors(tensors: Iterable[torch.Tensor | None], what: str, step: int) -> None:
    """Raise if any of `tensors` (e.g. gradients from `torch.autograd.grad`, or the architecture
    parameters after a step; None entries are skipped) holds a NaN or an inf."""
    present = [t for t in tensors if t is not None and t.numel()]
    if present and not torch.isfinite(total := _largest_abs(present)):
        raise _stop(what, float(total), step)
