"""Learning-rate schedules of the retrain loop, stepped once per optimizer step.

- "cosine" (the CPU default): cosine annealing from the optimizer's lr to `lr_min` over the whole run.
- "multistep" (the published top-down recipes: HRNet, SimpleBaseline, MSPN under MMPose, LPN): the lr is
  multiplied by `factor` at each epoch of `steps` (e.g. 170 and 200 of 210, x0.1).
Either can start with a linear warm-up over `warmup_iters` optimizer steps, from `warmup_ratio` x lr up
to the schedule's value (MMPose: 500 steps from 0.001 x lr).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from nas.errors import UserError

SCHEDULES = ("cosine", "multistep")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int, steps_per_epoch: int,
                   lr_min: float = 0.0, steps: Sequence[int] = (), factor: float = 0.1, warmup_iters: int = 0,
                   warmup_ratio: float = 0.001) -> torch.optim.lr_scheduler.LRScheduler:
    if kind not in SCHEDULES:
        raise UserError(f"lr_schedule={kind!r} is not a schedule; use one of {', '.join(SCHEDULES)}")
    total = max(1, epochs * steps_per_epoch)
    if kind == "cosine" and warmup_iters <= 0:  # the schedule every run before the recipes used
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, lr_min)
    if kind == "multistep" and any(int(s) < 1 for s in steps):
        raise UserError(f"lr_steps={list(steps)} must be epochs >= 1 (the lr drops when that epoch starts)")
    base = optimizer.param_groups[0]["lr"]

    def multiplier(step: int) -> float:
        if kind == "cosine":
            floor = lr_min / base if base else 0.0
            value = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        else:
            value = factor ** sum(step >= int(s) * steps_per_epoch for s in steps)
        if step < warmup_iters:
            value *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
        return value

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
