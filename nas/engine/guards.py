"""Stop a run on a non-finite loss before the bad step touches the weights."""
from __future__ import annotations

import math

import torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


def check_finite(loss: torch.Tensor, what: str, step: int) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{what} is {value} at step {step}. The weights were not updated and the last "
            "checkpoint is intact; lower the learning rate or check the data, then resume.")
    return value
