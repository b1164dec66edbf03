"""Latency of a network measured on this machine (estimators/latency_table.py estimates it from blocks).

Measured latency is wall-clock time of a forward pass at a fixed input size, after warm-up runs
(first calls pay for allocation and kernel selection). The median is the figure to quote: it is
robust to the occasional scheduler hiccup that inflates the mean on a shared machine. It is not robust to a
machine whose speed drifts for minutes (a shared VM): `drift_correction=True` also times a fixed probe network
after each pass and reports the latency at the machine's calibrated speed (estimators/speed.py).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
import torch
from torch import nn

from estimators.speed import Preemptions, ProbeTimer, _sync


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed_runs(model: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of `runs` forward passes, after `warmup` untimed ones."""
    times = []
    for i in range(warmup + runs):
        _sync(x.device)
        start = time.perf_counter()
        model(x)
        _sync(x.device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def measure_latency(model: nn.Module, input_size: tuple[int, int], device: str | torch.device = "cpu",
                    runs: int = 50, warmup: int = 10, batch_size: int = 1,
                    threads: int | None = None, drift_correction: bool = False) -> dict[str, object]:
    """Forward-pass time of `model` on a (batch_size, 3, H, W) input, in eval mode, no autograd.

    The model is moved to `device` (and left there); its train/eval mode is restored afterwards,
    so an estimator can time a model in the middle of a search. On the CPU, `threads` sets the
    intra-op threads for the measurement only; None keeps the current setting. `drift_correction`: each pass is
    followed by one of estimators.speed.SpeedProbe, and "corrected_ms" (with "probe" describing the calibration)
    is the median ratio to it times the probe's calibrated time.
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, batch_size >= 1; got {runs}, {warmup}, {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model = model.to(device).eval()
    x = torch.zeros(batch_size, 3, *input_size, device=device)
    threads_ctx = _cpu_threads(threads) if device.type == "cpu" else contextlib.nullcontext()
    try:
        with threads_ctx, torch.inference_mode():
            if drift_correction:
                timer = ProbeTimer(x.shape, device, threads)
            with Preemptions() as preempted:
                if drift_correction:
                    times, probe_times = _paired_runs(model, x, timer, runs, warmup)
                else:
                    times = _timed_runs(model, x, runs, warmup)
    finally:
        model.train(was_training)
    passes = (warmup + runs) * (3 if drift_correction else 1)  # a probe timing is two passes
    stats: dict[str, object] = {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)),
                                "p90_ms": float(np.percentile(times, 90)), "runs": runs, "batch_size": batch_size,
                                "device": str(device), "preemptions_per_pass": preempted.per_pass(passes)}
    if drift_correction:
        stats["corrected_ms"] = timer.corrected(times, probe_times)
        stats["probe"] = {**timer.describe(), "median_now_ms": float(np.median(probe_times))}
    return stats


def _paired_runs(model: nn.Module, x: torch.Tensor, timer: ProbeTimer, runs: int,
                 warmup: int) -> tuple[list[float], list[float]]:
    """Each of `runs` passes (after `warmup`) followed by the probe's (ProbeTimer.time): both lists of ms."""
    from estimators.speed import time_once
    times, probe_times = [], []
    for i in range(warmup + runs):
        t = time_once(model, x)
        p = timer.time()
        if i >= warmup:
            times.append(t)
            probe_times.append(p)
    return times, probe_times


class MeasuredLatency:
    """{"latency_ms": median forward time} of a network on this machine, the Estimator contract."""

    def __init__(self, input_size: tuple[int, int], device: str = "cpu", runs: int = 50, warmup: int = 10,
                 batch_size: int = 1, threads: int | None = None):
        self.input_size = tuple(input_size)
        self.device, self.runs, self.warmup = device, runs, warmup
        self.batch_size, self.threads = batch_size, threads

    def __call__(self, model: nn.Module, genotype: object = None) -> dict[str, float]:
        stats = measure_latency(model, self.input_size, self.device, self.runs, self.warmup,
                                self.batch_size, self.threads)
        return {"latency_ms": float(stats["median_ms"])}
