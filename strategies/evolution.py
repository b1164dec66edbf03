"""One-shot search with evolution under constraints (SPOS, Guo et al. 2020; as ViPNAS searches).

Phase 1 trains the space's weight-sharing supernet on sampled paths: one uniformly sampled path per
step, or the sandwich rule (largest + smallest + random paths, gradients summed; Yu et al. 2019).
Phase 2 evolves a population of genotypes: each generation keeps the best `parents`, adds
`mutations` mutated and `crossovers` crossed-over children, and keeps the best `population`.
A candidate's fitness is the pose accuracy of its path in the shared weights after BatchNorm
recalibration, on a fixed, seeded subset of held-out training images. Candidates over a constraint
(latency on a named device, GFLOPs, params) are never scored nor returned. Costs are those of the
network `nas.retrain` / `nas.profile` build from the emitted genotype file (its space resolved by
`space_name` with the genotype's own space_args), which can be wider than the searched supernet.

Under torch.distributed every rank samples the same paths and candidates (seeded generators), phase 1
averages the supernet's gradients over the ranks, and each generation's new candidates are scored in
parallel, a share per rank, the scores gathered before any ranking.

Each phase-2 generation is one search epoch without training steps, so the search loop checkpoints
after every generation: the population, the generation counter, every evaluated candidate (the
cache) and the RNG states are in `state_dict`, and a killed search resumes where it was.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from estimators.constraints import CandidateCost, pareto_front
from nas.engine import distributed
from nas.engine.checkpoint import generator_state, set_generator_state
from nas.engine.precision import autocast, grad_scaler
from nas.engine.guards import check_finite, check_finite_grads
from nas.engine.runtime import log
from nas.errors import UserError
from nas.genotype import Genotype
from nas.pose.loss import supervised_loss
from nas.utils.io import atomic_write_text
from strategies.genes import crossover, mutate

Batch = dict[str, torch.Tensor]


class Evolution:
    def __init__(self, space: Any, supernet: nn.Module, criterion: nn.Module, optimizer: Callable[..., Any],
                 epochs: int, steps_per_epoch: int, accuracy: Callable[..., dict[str, float]],
                 input_size: tuple[int, int], seed: int = 0, run_dir: str | None = None,
                 supernet_steps: int | None = None, sampling: str = "uniform", sandwich_random: int = 2, population: int = 16,
                 generations: int = 5, parents: int = 8, mutations: int = 8, crossovers: int = 4,
                 mutation_prob: float = 0.2, constraints: dict | None = None,
                 latency_table: str | None = None, grad_clip: float = 5.0, metric: str = "AP",
                 max_tries: int = 50, space_name: str | None = None, amp: str | None = None,
                 loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None):
        if not hasattr(supernet, "set_path"):
            raise UserError(f"search space {space.name!r} has no weight-sharing supernet (set_path); "
                            "strategy=evolution needs one (e.g. search_space=vipnas_mbv3)")
        if sampling not in ("uniform", "sandwich"):
            raise UserError(f"strategy.sampling must be 'uniform' or 'sandwich', got {sampling!r}")
        if sampling == "sandwich" and not (hasattr(space, "largest") and hasattr(space, "smallest")):
            raise UserError(f"the sandwich rule needs the largest and smallest members of {space.name!r}")
        if min(population, generations + 1, parents, max_tries) < 1 or parents > population:
            raise UserError("strategy: need population >= parents >= 1, generations >= 0, max_tries >= 1")
        self.space, self.supernet, self.criterion, self.accuracy = space, supernet, criterion, accuracy
        self.loss_fn = loss_fn  # a batch that is not one of images (video clips: nas.engine.clips)
        self.sampling, self.sandwich_random, self.grad_clip, self.metric = sampling, sandwich_random, grad_clip, metric
        self.sizes = dict(population=population, generations=generations, parents=parents,
                          mutations=mutations, crossovers=crossovers, max_tries=max_tries)
        self.mutation_prob = mutation_prob
        self.amp, self.device = amp, next(supernet.parameters()).device
        self.scaler = grad_scaler(amp, self.device)
        if supernet_steps is not None:  # phase 1's length, spread over the run's epochs
            if supernet_steps < 1:
                raise UserError(f"strategy.supernet_steps must be >= 1, got {supernet_steps}")
            steps_per_epoch = -(-supernet_steps // epochs)
        self.train_epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.cost = CandidateCost(input_size, table=_load_table(latency_table, constraints, input_size),
                                  **(constraints or {}))
        self.run_dir = Path(run_dir) if run_dir else None
        self.opt = optimizer([p for p in supernet.parameters()])
        self.rng, self.path_rng = random.Random(seed), random.Random(seed + 1)
        # the envelope of every candidate: what nas.search writes, so costs resolve as retrain resolves
        self.template = {**space.decode(supernet).to_dict(), "space": space_name or space.name,
                         "input_size": list(input_size)}
        self.population: list[str] = []
        self.cache: dict[str, dict] = {}
        self.references: list[dict] = []  # the space's reference points (video: key on every frame, no fusion)
        self.epoch, self.steps = 0, 0
        log.info("evolution: %d x %d supernet steps (%s sampling), then a population of %d over %d "
                 "generations; constraints %s", epochs, steps_per_epoch, sampling, population, generations,
                 self.cost.limits or "none")

    # ---- the schedule: training epochs, then one epoch per generation (no steps) -------------
    def schedule(self) -> tuple[int, int]:
        return self.train_epochs + self.sizes["generations"] + 1, self.steps_per_epoch

    def epoch_steps(self, epoch: int) -> int:
        return self.steps_per_epoch if epoch < self.train_epochs else 0

    # ---- phase 1 --------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        self.supernet.train()
        self.opt.zero_grad(set_to_none=True)
        paths = [self.space.sample(self.path_rng)]
        if self.sampling == "sandwich":
            paths = [self.space.largest(), self.space.smallest()] + [
                self.space.sample(self.path_rng) for _ in range(self.sandwich_random)]
        total = 0.0
        for path in paths:
            self.supernet.set_path(path)
            with autocast(self.amp, self.device):
                if self.loss_fn is not None:
                    loss = self.loss_fn(self.supernet, train_batch).float()
                else:
                    out = self.supernet(train_batch["image"])
            if self.loss_fn is None:
                loss = supervised_loss(self.criterion, out, train_batch, bool(self.amp))
            total += check_finite(loss, "training loss", self.steps)
            self.scaler.scale(loss).backward()
        distributed.average_gradients(self.supernet.parameters())  # the same paths on every rank
        total = distributed.mean_scalar(total)
        self.scaler.unscale_(self.opt)
        if not self.scaler.is_enabled():  # fp16: the GradScaler skips an overflowed step instead
            check_finite_grads(self.supernet.parameters(), "supernet weights", self.steps)
        nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.supernet.set_path(None)
        self.steps += 1
        return {"loss": total / len(paths)}

    # ---- phase 2 --------------------------------------------------------------------------
    def _genotype(self, genes: dict) -> Genotype:
        return Genotype.from_dict({**self.template, "genotype": genes, "provenance": {}})

    def _evaluate(self, genotype: Genotype) -> dict:
        key = json.dumps(genotype.genotype, sort_keys=True)
        if key not in self.cache:
            genotype = self._genotype(genotype.genotype)  # costed in the envelope result() emits
            # rank 0's costs for every rank: a measured latency differs between processes
            costs = distributed.broadcast_object(self.cost.costs(genotype) if distributed.is_main() else None)
            entry = {"genotype": genotype.genotype, **costs, "violations": self.cost.violations(costs)}
            self.cache[key] = entry  # scored by _score_pending, all pending candidates at once
        return self.cache[key]

    def _score_pending(self) -> None:
        """Score every feasible candidate not scored yet (its path in the shared weights, BatchNorm
        recalibrated): each rank scores its share of them, and all ranks gather every score."""
        pending = [k for k, e in self.cache.items() if not e["violations"] and self.metric not in e]
        mine = {}
        for key in distributed.shard(pending):
            self.supernet.set_path(self._genotype(self.cache[key]["genotype"]))
            scores = self.accuracy(self.supernet, calibrate=True)
            if self.metric not in scores:
                raise UserError(f"strategy.metric={self.metric} is not a score of the accuracy estimator; "
                                f"use one of {', '.join(sorted(scores))}")
            # every score is kept (pareto.json), so a study can compare proxies on the same candidates
            mine[key] = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}
        self.supernet.set_path(None)
        for part in distributed.all_gather_objects(mine):
            for key, scores in part.items():
                self.cache[key].update(scores)

    def _feasible(self, keys: list[str]) -> list[str]:
        return [k for k in keys if not self.cache[k]["violations"]]

    def _ranked(self, keys: list[str]) -> list[str]:
        return sorted(dict.fromkeys(self._feasible(keys)), key=lambda k: -self.cache[k][self.metric])

    def _initial_population(self) -> None:
        tries = 0
        while len(self.population) < self.sizes["population"] and tries < self.sizes["max_tries"] * self.sizes["population"]:
            tries += 1
            entry = self._evaluate(self.space.sample(self.rng))
            key = json.dumps(entry["genotype"], sort_keys=True)
            if not entry["violations"] and key not in self.population:
                self.population.append(key)
        self._score_pending()
        if not self.population:
            seen = {c: min(e[c] for e in self.cache.values()) for c in ("params_M", "GFLOPs", "latency_ms")
                    if all(c in e for e in self.cache.values())}
            raise UserError(f"none of {tries} sampled candidates met the constraints {self.cost.limits} "
                            f"(smallest seen: {seen}); loosen strategy.constraints")

    def _children(self, parents: list[str], count: int, make: Callable[[], Genotype]) -> list[str]:
        children: list[str] = []
        for _ in range(self.sizes["max_tries"] * max(count, 1)):
            if len(children) >= count:
                break
            entry = self._evaluate(make())
            key = json.dumps(entry["genotype"], sort_keys=True)
            if not entry["violations"] and key not in parents and key not in children:
                children.append(key)
        return children

    def _generation(self) -> None:
        parents = self._ranked(self.population)[: self.sizes["parents"]]
        pick = lambda: self._genotype(self.cache[self.rng.choice(parents)]["genotype"])  # noqa: E731
        children = self._children(parents, self.sizes["mutations"],
                                  lambda: mutate(self.space, pick(), self.rng, self.mutation_prob))
        children += self._children(parents + children, self.sizes["crossovers"],
                                   lambda: crossover(self.space, pick(), pick(), self.rng))
        self._score_pending()
        self.population = self._ranked(self.population + children)[: self.sizes["population"]]

    def end_epoch(self) -> dict[str, Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if epoch < self.train_epochs:
            return {}
        generation = epoch - self.train_epochs
        if generation == 0:
            self._initial_population()
        else:
            self._generation()
        if generation == self.sizes["generations"]:
            self._verify_best()
            self._score_references()
        best = self.cache[self._ranked(self.population)[0]]
        self._write_front()
        log.info("generation %d/%d: best %s %.4f (%s), %d candidates evaluated", generation,
                 self.sizes["generations"], self.metric, best[self.metric], _costs_text(best), len(self.cache))
        return {"generation": generation, f"best_{self.metric}": best[self.metric],
                "evaluated": len(self.cache), **{k: best[k] for k in ("GFLOPs", "params_M", "latency_ms") if k in best}}

    def _verify_best(self) -> None:
        """A table estimate can be off, and a measurement of `latency_runs` passes is noisy: time the best
        candidates again (`CandidateCost.verified_latency`: the median of verify_repeats x verify_runs passes)
        and drop any over the limit less verify_margin, best first, until one holds."""
        if "latency_ms" not in self.cost.limits:
            return
        limit, cost = self.cost.verify_limit, self.cost
        what = f"the median of {cost.verify_repeats} x {cost.verify_runs} runs"
        for key in self._ranked(self.population):
            entry = self.cache[key]
            entry["measured_latency_ms"] = distributed.broadcast_object(
                cost.verified_latency(self._genotype(entry["genotype"])) if distributed.is_main() else None)
            if entry["measured_latency_ms"] <= limit:
                log.info("the best candidate's latency, %s: %.2f ms (limit %.2f less %.0f%%: %.2f)", what,
                         entry["measured_latency_ms"], cost.limits["latency_ms"], 100 * cost.verify_margin, limit)
                return
            entry["violations"] = ["latency_ms (measured)"]
            log.info("dropping a candidate whose latency, %s, %.2f ms, exceeds the limit less %.0f%%: %.2f", what,
                     entry["measured_latency_ms"], 100 * cost.verify_margin, limit)
        hint = ("rebuild the latency table (python -m nas.tools.latency_table) or loosen the limit"
                if cost.table is not None else "loosen strategy.constraints.latency_ms")
        raise UserError(f"every candidate's latency, {what}, exceeds strategy.constraints.latency_ms="
                        f"{cost.limits['latency_ms']} less verify_margin={cost.verify_margin}; {hint}")

    def _score_references(self) -> None:
        """The space's reference points (`reference_points(supernet, best)`), scored by the same estimator in
        the same shared weights and costed like candidates, for pareto.json and its plot."""
        points = getattr(self.space, "reference_points", None)
        if points is None or self.references:
            return
        best = self._genotype(self.cache[self._ranked(self.population)[0]]["genotype"])
        for label, (configure, genotype, net) in points(self.supernet, best).items():
            configure()
            scores = self.accuracy(self.supernet, calibrate=True)
            costs = distributed.broadcast_object(self.cost.costs(genotype, net) if distributed.is_main() else None)
            self.references.append({"label": label, **costs, **{k: float(v) for k, v in scores.items()
                                                                if isinstance(v, (int, float))}})
            log.info("reference %r: %s %.4f (%s)", label, self.metric, self.references[-1][self.metric],
                     _costs_text(self.references[-1]))
        self.supernet.set_path(None)

    def _write_front(self) -> None:
        if self.run_dir is None or not distributed.is_main():
            return
        points = [e for e in self.cache.values() if not e["violations"]]
        front = pareto_front(points, self.metric, self.cost.cost_axis)
        report = {"score": self.metric, "cost": self.cost.cost_axis, "constraints": self.cost.limits,
                  "front": front, "evaluated": list(self.cache.values())}
        if self.references:
            report["references"] = self.references
        if self.cost.probe is not None:  # what the drift-corrected latencies are relative to
            report["latency_calibration"] = self.cost.probe
        atomic_write_text(self.run_dir / "pareto.json", json.dumps(report, indent=1) + "\n")
        try:
            from nas.plots import plot_pareto
        except ImportError:  # plotting is optional for the search itself
            return
        plot_pareto(report, self.run_dir / "pareto.png")

    # ---- results and state ----------------------------------------------------------------
    def result(self) -> Genotype:
        ranked = self._ranked(self.population) if self.population else []
        if not ranked:
            return self.space.decode(self.supernet)  # during phase 1: the supernet's default member
        entry = self.cache[ranked[0]]
        genotype = self._genotype(entry["genotype"])
        genotype.provenance = {"search_score": {self.metric: entry[self.metric]},
                               "costs": {k: entry[k] for k in ("params_M", "GFLOPs", "latency_ms",
                                                                "measured_latency_ms") if k in entry},
                               "constraints": self.cost.limits}
        if "latency_ms" in entry and self.cost.table is None:
            genotype.provenance["latency"] = ("drift-corrected (estimators/speed.py)" if self.cost.drift_correction
                                              else "raw median")
        return genotype

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "epoch": self.epoch, "steps": self.steps,
                "population": list(self.population), "cache": self.cache, "references": self.references,
                "rng": generator_state(self.rng), "path_rng": generator_state(self.path_rng)}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.steps = state["epoch"], state["steps"]
        self.population, self.cache = list(state["population"]), dict(state["cache"])
        self.references = list(state.get("references", []))  # absent from checkpoints written before them
        set_generator_state(self.rng, state["rng"])
        set_generator_state(self.path_rng, state["path_rng"])


def _load_table(path: str | None, constraints: dict | None, input_size: tuple[int, int]) -> Any:
    if path is None:
        return None
    from estimators.latency_table import LatencyTable
    device = (constraints or {}).get("device", "cpu")
    return LatencyTable.load(path, device, input_size)


def _costs_text(entry: dict) -> str:
    parts = [f"{entry['params_M']:.2f}M params", f"{entry['GFLOPs']:.3f} GFLOPs"]
    if "latency_ms" in entry:
        parts.append(f"{entry['latency_ms']:.2f} ms")
    return ", ".join(parts)

