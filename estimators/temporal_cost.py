"""The cost of a temporal network (search_spaces/temporal.py) per frame: what a video search constrains.

A cycle is the key frame and its T light frames. `frame_gflops` counts each position of the cycle with thop
(estimators.complexity.count_gflops): the key network on its frame, each light network with its fusion fed
heatmaps; `cycle_gflops` is their sum and the mean per frame is that over 1 + T. `frame_latency_ms` times the
online `step()` at each position over several cycles on one device and thread setting (median per position),
the warp of the previous heatmaps included, and gives the mean per frame over a cycle; with `drift_correction`
each cycle ends with one pass of estimators.speed.SpeedProbe and the same figures are also given at the
machine's calibrated speed (each step's median ratio to the probe of its cycle x the probe's calibrated time).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from estimators.complexity import count_gflops
from estimators.latency import _cpu_threads
from estimators.speed import Preemptions, ProbeTimer, _sync


def is_temporal(net: nn.Module) -> bool:
    """A video network run online in cycles (search_spaces.temporal.TemporalPoseNet), not an image network."""
    return hasattr(net, "step") and hasattr(net, "cycle") and hasattr(net, "key")


class KeyOnly(nn.Module):
    """An image network as a cycle of one frame (`cycle` 0, `step` = its forward), so the key network on every
    frame is timed by `frame_latency_ms` exactly as a video network's steps are."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.key, self.cycle = net, 0

    def reset(self) -> None:
        pass

    def step(self, image: torch.Tensor, affine: torch.Tensor | None = None) -> torch.Tensor:
        out = self.key(image)
        return out[-1] if isinstance(out, (list, tuple)) else out


class _LightWithHeat(nn.Module):
    """A light frame as thop sees it: the fused light network fed heatmaps of the key network's shape."""

    def __init__(self, net: nn.Module, frame: int, heat_shape: Sequence[int]):
        super().__init__()
        self.net, self.frame, self.heat_shape = net, frame, tuple(heat_shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.run_light(self.frame, image, torch.zeros(image.shape[0], *self.heat_shape))


def frame_gflops(net: nn.Module, input_size: Sequence[int]) -> list[float]:
    """GFLOPs of each position of the cycle: [key, light 1, ..., light T]."""
    size = (int(input_size[0]), int(input_size[1]))
    with torch.no_grad():
        heat = net.eval().key(torch.zeros(1, 3, *size))
    heat = heat[-1] if isinstance(heat, (list, tuple)) else heat
    costs = [count_gflops(net.key, size)]
    costs += [count_gflops(_LightWithHeat(net, i, heat.shape[1:]), size) for i in range(net.cycle)]
    return costs


def cycle_gflops(net: nn.Module, input_size: Sequence[int]) -> float:
    return float(sum(frame_gflops(net, input_size)))


@torch.no_grad()
def frame_latency_ms(net: nn.Module, input_size: Sequence[int], cycles: int = 10, warmup: int = 2,
                     device: str | torch.device = "cpu", threads: int | None = 1,
                     drift_correction: bool = False) -> dict[str, object]:
    """Online step times: {"per_position": [median ms of the key frame, of light 1, ...], "mean_per_frame":
    their mean over a cycle, "cycles", "device", "threads"[, "corrected_per_position", "corrected_per_frame",
    "probe"]}. Frames are random images whose crops move a little (so the heatmap warp runs as in a video)."""
    device = torch.device(device)
    net = net.to(device).eval()
    length = net.cycle + 1
    size = (int(input_size[0]), int(input_size[1]))
    g = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in range(length)]
    probe_times: list[float] = []
    with _cpu_threads(threads if device.type == "cpu" else None):
        timer = ProbeTimer((1, 3, *size), device, threads) if drift_correction else None
        net.reset()
        with Preemptions() as preempted:
            for c in range(warmup + cycles):
                for t in range(length):
                    image = torch.randn(1, 3, *size, generator=g).to(device)
                    affine = torch.tensor([[[1.0, 0.0, -float(c * length + t)], [0.0, 1.0, 0.0]]], device=device)
                    _sync(device)
                    start = time.perf_counter()
                    net.step(image, affine)
                    _sync(device)
                    if c >= warmup:
                        times[t].append((time.perf_counter() - start) * 1e3)
                if timer is not None:
                    probe = timer.time()
                    if c >= warmup:
                        probe_times.append(probe)
    medians = [float(np.median(ts)) for ts in times]
    passes = (warmup + cycles) * (length + (2 if timer is not None else 0))
    out: dict[str, object] = {"per_position": medians, "mean_per_frame": sum(medians) / length, "cycles": cycles,
                              "device": str(device), "threads": threads,
                              "preemptions_per_pass": preempted.per_pass(passes)}
    if timer is not None:
        corrected = [timer.corrected(ts, probe_times) for ts in times]
        out.update(corrected_per_position=corrected, corrected_per_frame=sum(corrected) / length,
                   probe={**timer.describe(), "median_now_ms": float(np.median(probe_times))})
    return out
