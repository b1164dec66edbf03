"""Checkpoints that hold everything a resume needs, written atomically, read with weights_only.

Content: {"model", "strategy" or "optimizer"/"scheduler", "rng", "epoch", ...} where every value is a
tensor, number, string, list or dict, so `torch.load(..., weights_only=True)` can read it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.utils.io import atomic_write_with


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a weights_only-safe form."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    atomic_write_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def generator_state(rng: random.Random) -> list:
    """A `random.Random`'s state as plain lists (loadable with weights_only=True)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_generator_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))
