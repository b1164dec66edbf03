"""Costs of a candidate network (params, GFLOPs, latency) and the constraints a search puts on them.

A candidate is costed as the network `nas.retrain` and `nas.profile` will build from the genotype
file the search emits, not as the search-time network: its space is resolved by name through
conf/search_space/ with the genotype's own `space_args` (which may differ from the search's, e.g.
darts_cells's `retrain_channels`), exactly as those entry points resolve it. So every cost reported
and every limit enforced holds for the network a user retrains.

Latency comes from a lookup table for the named device when one is given (fast enough to screen
every candidate), else from a measurement of that network at batch 1.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import nn

from estimators.complexity import count_gflops, count_params
from estimators.speed import busy_warning
from estimators.temporal_cost import frame_gflops, frame_latency_ms, is_temporal
from nas.errors import UserError
from nas.genotype import Genotype
from nas.spaces import resolve

log = logging.getLogger(__name__)

LIMIT_KEYS = {"latency_ms": "latency_ms", "gflops": "GFLOPs", "params_m": "params_M"}


def emitted_network(genotype: Genotype) -> nn.Module:
    """The standalone network of `genotype` as retrain and profile build it from its file (no
    `space_args` overrides on their command line): `resolve(genotype).build(genotype)`."""
    return resolve(genotype).build(genotype)


class CandidateCost:
    """`costs(genotype)` -> {"params_M", "GFLOPs"[, "latency_ms"]} of the genotype's emitted
    network; `violations(costs)` -> the names of the limits a candidate exceeds (empty: feasible)."""

    def __init__(self, input_size: tuple[int, int], latency_ms: float | None = None,
                 gflops: float | None = None, params_m: float | None = None, device: str = "cpu",
                 threads: int | None = 1, latency_runs: int = 20, table: Any = None,
                 drift_correction: bool = True, verify_runs: int = 200, verify_repeats: int = 3,
                 verify_margin: float = 0.03, verify_fresh_process: bool = True):
        self.input_size = tuple(input_size)
        self.limits = {k: v for k, v in (("latency_ms", latency_ms), ("gflops", gflops),
                                         ("params_m", params_m)) if v is not None}
        for key, value in self.limits.items():
            if value <= 0:
                raise UserError(f"strategy.constraints.{key} must be positive, got {value}")
        if min(latency_runs, verify_runs, verify_repeats) < 1 or not 0 <= verify_margin < 1:
            raise UserError(f"strategy.constraints: need latency_runs, verify_runs, verify_repeats >= 1 and "
                            f"0 <= verify_margin < 1; got {latency_runs}, {verify_runs}, {verify_repeats}, "
                            f"{verify_margin}")
        self.device, self.threads, self.runs, self.table = device, threads, latency_runs, table
        # a latency table holds raw medians: its winners are verified in the same unit
        self.drift_correction, self.verify_runs = bool(drift_correction) and table is None, verify_runs
        self.verify_repeats, self.verify_margin = verify_repeats, float(verify_margin)
        self.verify_fresh_process = bool(verify_fresh_process)
        # what a fresh process needs to measure as this one does (verified_latency)
        self._measure_args = dict(input_size=self.input_size, device=device, threads=threads, latency_runs=latency_runs,
                                  drift_correction=self.drift_correction, verify_runs=verify_runs)
        self.with_latency = latency_ms is not None or table is not None
        self.probe: dict | None = None  # the speed calibration of the last drift-corrected measurement
        self.busy = 0  # measurements taken while other processes competed for the cores (estimators.speed)

    def measured_latency(self, genotype: Genotype, net: nn.Module | None = None, runs: int | None = None) -> float:
        """Median batch-1 latency of the genotype's emitted network (`net`, when already built) over `runs`
        passes (default latency_runs); for a video network (temporal space) the mean over a cycle of each frame's
        median online step time. With drift_correction (the default), the figure at the machine's calibrated
        speed (estimators/speed.py), so candidates timed minutes apart compare."""
        from estimators.latency import measure_latency
        net = emitted_network(genotype) if net is None else net
        runs = self.runs if runs is None else runs
        if is_temporal(net):
            stats = frame_latency_ms(net, self.input_size, cycles=max(3, runs // (net.cycle + 1)),
                                     device=self.device, threads=self.threads, drift_correction=self.drift_correction)
            figure = stats["corrected_per_frame"] if self.drift_correction else stats["mean_per_frame"]
        else:
            stats = measure_latency(net, self.input_size, self.device, runs=runs, warmup=max(2, runs // 4),
                                    threads=self.threads, drift_correction=self.drift_correction)
            figure = stats["corrected_ms"] if self.drift_correction else stats["median_ms"]
        if self.drift_correction:
            self.probe = {k: v for k, v in stats["probe"].items() if k != "median_now_ms"}
        warning = busy_warning(stats.get("preemptions_per_pass"))
        if warning:
            self.busy += 1
            if self.busy in (1, 10, 100):  # not once per candidate
                log.warning("latency of a candidate (%d so far): %s", self.busy, warning)
        return float(figure)

    def verified_latency(self, genotype: Genotype) -> float:
        """The median of `verify_repeats` measurements of `verify_runs` passes each: what the search's answer is
        held to. With `verify_fresh_process` (the default) they run in a new process, as `nas.profile` measures:
        on the 2-core machine the search process's own timings of the answer came out 3-6% under nas.profile's
        (4.73 and 4.78 ms against means of 5.0 and 4.93 over 13 and 5 profile runs), one single timing 5% under
        the next."""
        if self.verify_fresh_process:
            import multiprocessing
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                figures, probe, busy = pool.apply(_verify_in_child, (self._measure_args, genotype.to_dict(),
                                                                      self.verify_repeats))
            self.probe = probe or self.probe
            if busy:
                log.warning("%d of the %d verification timings ran while other processes competed for the cores: "
                            "the figure is inflated (estimators/speed.py)", busy, self.verify_repeats)
        else:
            figures = _verify(self, genotype, self.verify_repeats)
        return float(np.median(figures))

    @property
    def verify_limit(self) -> float:
        """The latency the best candidates must verify under: the limit less `verify_margin`, so that a later
        measurement (nas.profile), as noisy as this one, stays under the limit itself."""
        return self.limits["latency_ms"] * (1.0 - self.verify_margin)

    def costs(self, genotype: Genotype, net: nn.Module | None = None) -> dict[str, float]:
        """params_M, GFLOPs[, latency_ms]. A video network's GFLOPs and latency are its mean per frame over a
        cycle (`cycle_GFLOPs` is the cycle's sum), so they compare with an image network run on every frame.
        `net`: the genotype's network, already built (or changed, e.g. run without fusion)."""
        net = emitted_network(genotype) if net is None else net
        if is_temporal(net):
            per_frame = frame_gflops(net, self.input_size)
            out = {"params_M": count_params(net) / 1e6, "GFLOPs": sum(per_frame) / len(per_frame),
                   "cycle_GFLOPs": sum(per_frame)}
            if self.table is not None:
                raise UserError("strategy.latency_table does not cover video networks (search_space=temporal): "
                                "set strategy.latency_table=null to measure each candidate")
            if self.with_latency:
                out["latency_ms"] = self.measured_latency(genotype, net)
            return out
        out = {"params_M": count_params(net) / 1e6, "GFLOPs": count_gflops(net, self.input_size)}
        if self.with_latency:
            if self.table is not None:
                out["latency_ms"] = float(self.table.estimate(net, self.input_size))
            else:
                out["latency_ms"] = self.measured_latency(genotype, net)
        return out

    def violations(self, costs: dict[str, float]) -> list[str]:
        return [key for key, limit in self.limits.items() if costs[LIMIT_KEYS[key]] > limit]

    @property
    def cost_axis(self) -> str:
        """The cost the Pareto front is drawn against: latency when known, else GFLOPs."""
        return "latency_ms" if self.with_latency else "GFLOPs"


def _verify(cost: CandidateCost, genotype: Genotype, repeats: int) -> list[float]:
    net = emitted_network(genotype)
    return [cost.measured_latency(genotype, net, runs=cost.verify_runs) for _ in range(repeats)]


def _verify_in_child(args: dict, genotype: dict, repeats: int) -> tuple[list[float], dict | None, int]:
    """CandidateCost.verified_latency's measurements, in a fresh process (spawned: nothing of the search's
    memory, threads or allocator state): the figures, the calibration and how many were taken on a busy machine."""
    cost = CandidateCost(**args)
    logging.getLogger("estimators.constraints").setLevel(logging.ERROR)  # the parent warns instead
    return _verify(cost, Genotype.from_dict(genotype), repeats), cost.probe, cost.busy


def pareto_front(points: list[dict[str, Any]], score: str, cost: str) -> list[dict[str, Any]]:
    """The points no other point beats (higher or equal `score` and lower or equal `cost`, one
    strictly), sorted by cost."""
    front = []
    for p in points:
        dominated = any(q[score] >= p[score] and q[cost] <= p[cost] and (q[score] > p[score] or q[cost] < p[cost])
                        for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p[cost], -p[score]))
