"""Latency lookup tables: per-block latencies measured once per device and input resolution, so a
search can estimate a candidate's latency without timing it (the nn-Meter / FBNet approach).

A network's blocks are its modules whose class sets `latency_block = True` (stems, residual blocks,
head layers); a network without any is split into its top-level children (a ModuleList into its
items). A block is keyed by its
class, its input shape and a hash of its printed configuration (channels, kernels, groups, ...).
The estimate is the sum of the network's block latencies plus a constant (the framework overhead
and whatever lies outside the blocks), measured as the median gap between whole-network and summed
latencies over the networks the table was built from.

File: {"format": "posenas.latency_table", "version": 1, "devices": {DEVICE: {"HxW": {"threads",
"constant_ms", "blocks": {key: {"ms", "block", "input_shape"}}, "accuracy"?}}}}; building a table for
another device or resolution adds to the file, never replacing what is there.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from estimators.latency import _cpu_threads, _timed_runs, measure_latency
from nas.errors import UserError
from nas.utils.io import atomic_write_text

FORMAT, VERSION = "posenas.latency_table", 1


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The latency blocks of `model`, outermost first (a block's own sub-blocks are not listed)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if getattr(child, "latency_block", False):
                found.append(child)
            else:
                visit(child)
    visit(model)
    if found:
        return found
    return [g for c in model.children()
            for g in (c.children() if isinstance(c, (nn.ModuleList, nn.ModuleDict)) else [c])]


def block_inputs(model: nn.Module, input_size: tuple[int, int]) -> list[tuple[str, nn.Module, tuple]]:
    """(key, block, input shape) of each block call in one batch-1 forward pass."""
    calls: list[tuple[str, nn.Module, tuple]] = []
    hooks = [b.register_forward_pre_hook(lambda m, args: calls.append((block_key(m, args[0].shape), m,
                                                                       tuple(args[0].shape))))
             for b in blocks_of(model)]
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, *input_size, device=_device_of(model)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


def block_key(block: nn.Module, shape: Iterable[int]) -> str:
    config = hashlib.sha1(repr(block).encode()).hexdigest()[:12]
    return f"{type(block).__name__}|{'x'.join(str(int(s)) for s in shape)}|{config}"


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(())).device


def time_block(block: nn.Module, shape: tuple, device: str, runs: int, warmup: int,
               threads: int | None) -> float:
    """Median ms of `block` alone on a random input of `shape` (a copy, so the network is untouched)."""
    probe = copy.deepcopy(block).to(device).eval()
    x = torch.randn(*shape, device=device)
    ctx = _cpu_threads(threads) if torch.device(device).type == "cpu" else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        return statistics.median(_timed_runs(probe, x, runs, warmup))


class LatencyTable:
    """Block latencies for one device and input resolution; `estimate(model, input_size)` in ms."""

    def __init__(self, device: str, input_size: tuple[int, int], threads: int | None = 1,
                 blocks: dict | None = None, constant_ms: float = 0.0, runs: int = 30, warmup: int = 5):
        self.device, self.input_size, self.threads = device, tuple(input_size), threads
        self.blocks: dict[str, dict] = dict(blocks or {})
        self.constant_ms, self.runs, self.warmup = float(constant_ms), runs, warmup
        self.accuracy: dict | None = None
        self.missing = 0  # blocks estimated on the fly, absent from the table

    # ---- use -------------------------------------------------------------------------------
    def block_sum(self, model: nn.Module, input_size: tuple[int, int] | None = None) -> float:
        total = 0.0
        for key, block, shape in block_inputs(model, tuple(input_size or self.input_size)):
            if key not in self.blocks:
                self.missing += 1
                self.add(key, block, shape)
            total += self.blocks[key]["ms"]
        return total

    def estimate(self, model: nn.Module, input_size: tuple[int, int] | None = None) -> float:
        return self.block_sum(model, input_size) + self.constant_ms

    # ---- building ----------------------------------------------------------------------------
    def add(self, key: str, block: nn.Module, shape: tuple) -> None:
        ms = time_block(block, shape, self.device, self.runs, self.warmup, self.threads)
        self.blocks[key] = {"ms": ms, "block": type(block).__name__, "input_shape": list(shape)}

    def build(self, models: list[nn.Module]) -> None:
        """Time every block of `models` not yet in the table, then the constant from their whole runs."""
        gaps = []
        for model in models:
            calls = block_inputs(model, self.input_size)
            for key, block, shape in calls:
                if key not in self.blocks:
                    self.add(key, block, shape)
            gaps.append(self.measure(model) - sum(self.blocks[key]["ms"] for key, _, _ in calls))
        self.constant_ms = statistics.median(gaps) if gaps else 0.0

    def measure(self, model: nn.Module) -> float:
        return float(measure_latency(model, self.input_size, self.device, self.runs, self.warmup,
                                     threads=self.threads)["median_ms"])

    def report(self, models: list[nn.Module], tolerance: float = 0.10) -> dict[str, Any]:
        """Estimated against measured latency of `models`: share within +-tolerance, Kendall tau."""
        from scipy.stats import kendalltau
        measured = [self.measure(m) for m in models]
        estimated, covered = [], []
        for m in models:
            before = self.missing
            estimated.append(self.estimate(m))
            covered.append(self.missing == before)  # every block came from the table
        errors = [(e - m) / m for e, m in zip(estimated, measured)]
        tau = kendalltau(measured, estimated).statistic if len(models) > 1 else float("nan")
        self.accuracy = {"networks": len(models), "tolerance": tolerance,
                         "within": sum(abs(x) <= tolerance for x in errors) / max(len(errors), 1),
                         "kendall_tau": float(tau),
                         "mean_abs_error": statistics.fmean(abs(x) for x in errors) if errors else 0.0,
                         "max_abs_error": max((abs(x) for x in errors), default=0.0),
                         "fully_covered": sum(covered),
                         "within_fully_covered": sum(abs(x) <= tolerance for x, c in zip(errors, covered) if c)
                         / max(sum(covered), 1),
                         "measured_ms": measured, "estimated_ms": estimated}
        return self.accuracy

    # ---- the file ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = _read(path) if path.exists() else {"format": FORMAT, "version": VERSION, "devices": {}}
        entry = {"threads": self.threads, "constant_ms": self.constant_ms, "runs": self.runs,
                 "torch": torch.__version__, "blocks": self.blocks}
        if self.accuracy is not None:
            entry["accuracy"] = self.accuracy
        data["devices"].setdefault(self.device, {})[_res(self.input_size)] = entry
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str, input_size: tuple[int, int]) -> "LatencyTable":
        data = _read(Path(path))
        tables = data["devices"].get(device, {})
        if _res(input_size) not in tables:
            have = [f"{d} {r}" for d, rs in data["devices"].items() for r in rs]
            raise UserError(f"latency table {path} has no entry for device {device!r} at "
                            f"{_res(input_size)} (it has: {', '.join(have) or 'nothing'}); build one with "
                            "python -m nas.tools.latency_table, or constrain FLOPs/params instead")
        entry = tables[_res(input_size)]
        table = cls(device, input_size, entry.get("threads"), entry["blocks"], entry["constant_ms"],
                    entry.get("runs", 30))
        table.accuracy = entry.get("accuracy")
        return table


def _res(input_size: tuple[int, int]) -> str:
    return f"{int(input_size[0])}x{int(input_size[1])}"


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"latency table not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"latency table {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("devices"), dict):
        raise UserError(f"{path} is not a posenas latency table (expected format {FORMAT!r})")
    return data
