"""Small pieces the tests plug into real runs through config overrides."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from nas.pose.loss import KeypointMSELoss
from strategies.evolution import Evolution

REPO_ROOT = Path(__file__).resolve().parents[1]

# Sizes that keep a real end-to-end run to seconds on a 2-core CPU.
TINY_DATA = ["data.num_train=10", "data.num_val=4", "data.image_size=[128,128]", "data.max_people=2",
             "data.input_size=[64,48]", "data.heatmap_size=[16,12]", "data.sigma=1.0", "num_workers=0"]
TINY_SPACE = ["search_space.init_channels=4", "search_space.layers=3", "search_space.steps=2",
              "search_space.reductions=1", "search_space.retrain_channels=null"]


def run_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, POSENAS_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class NaNAfter(nn.Module):
    """The usual loss, but NaN from the `after`-th call on: a stand-in for a diverging run."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls, self.loss = after, 0, KeypointMSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.loss(pred, target, weight)
        return loss * float("nan") if self.calls > self.after else loss



class EvolutionKilledAt(Evolution):
    """The evolution strategy, but its process SIGKILLs itself when epoch `kill_at` ends, before that
    epoch's checkpoint: a kill at an exact point of the search, without timing races."""

    def __init__(self, kill_at: int, **kwargs):
        super().__init__(**kwargs)
        self.kill_at = kill_at

    def end_epoch(self):
        if self.epoch == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().end_epoch()


class _NaNGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


class NaNGradAfter(nn.Module):
    """The usual loss, finite at every call, whose gradient is NaN from the `after`-th call on:
    the case a loss-value guard cannot see."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls, self.loss = after, 0, KeypointMSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            pred = _NaNGradient.apply(pred)
        return self.loss(pred, target, weight)


class TermAtFirstLoss(nn.Module):
    """The usual loss, but the process sends itself SIGTERM at the first call: a scheduler's stop request at
    an exact point of a run (it checkpoints at the step's end and exits with 128 + SIGTERM)."""

    def __init__(self, use_target_weight: bool = True):
        super().__init__()
        self.calls, self.loss = 0, KeypointMSELoss(use_target_weight=use_target_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.loss(pred, target, weight)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes): two generated datasets compare equal when their bytes do."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
