"""The search loop: feed a strategy (train batch, held-out batch) pairs, checkpoint every epoch.

A checkpoint is written at the end of each epoch with the supernet, the strategy's optimizers and
schedulers, the RNG states and the epoch counter, so a killed search resumed from it replays the
remaining epochs exactly as an uninterrupted run would (same machine, same seed).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nas.data.bad_images import BadImageMonitor
from nas.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.engine.runtime import MetricsLog, format_eta, forever, log, to_device
from nas.errors import UserError
from nas.genotype import Genotype


def run_search(strategy: Any, supernet: torch.nn.Module, train_loader, arch_loader, epochs: int,
               device: torch.device, run_dir: Path, resume_from: Path | None,
               steps_per_epoch: int | None = None,
               bad_images: BadImageMonitor | None = None, early_stop: str | None = None) -> Genotype:
    """Run the remaining epochs and return the genotype. `early_stop` names a rule of `EarlyStop`
    (None: every epoch runs). `steps_per_epoch` (None: one pass over `train_loader`) may exceed the
    loader: it is cycled."""
    start, stopper = 0, EarlyStop(early_stop)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        supernet.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"])
        start = state["epoch"] + 1
        stopper.load_state_dict(state)
        log.info("resumed from %s at epoch %d/%d", resume_from, start, epochs)
    if stopper.stopped:
        return Genotype.from_dict(stopper.kept)
    metrics = MetricsLog(run_dir / "metrics.jsonl", keep_before_epoch=start)
    arch_log = MetricsLog(run_dir / "arch_weights.jsonl", keep_before_epoch=start) \
        if hasattr(supernet, "arch_weights") else None  # softmaxed weights per epoch, for plots
    steps = len(train_loader) if steps_per_epoch is None else steps_per_epoch
    started = time.time()
    for epoch in range(start, epochs):
        t0 = time.time()
        n_steps = strategy.epoch_steps(epoch) if hasattr(strategy, "epoch_steps") else steps
        summary = _epoch(strategy, train_loader, arch_loader, n_steps, device, epoch, epochs, bad_images)
        summary.update(strategy.end_epoch())  # before result(): a strategy may rank candidates here
        genotype = strategy.result()
        if arch_log is not None:
            arch_log.write(arch_weights_record(supernet, epoch))
        reason = stopper.judge(genotype, epoch, arch_moving(strategy))
        record = {"epoch": epoch, **summary, "epoch_s": round(time.time() - t0, 2),
                  "skip_connects": count_op(genotype.genotype, "skip_connect"), "genotype": genotype.genotype}
        if reason:
            record["early_stop"] = reason
        if bad_images is not None and bad_images.report():
            record["skipped_images"] = dict(bad_images.paths)
        metrics.write(record)
        latency = f"  expected latency {summary['expected_latency_ms']:.2f} ms" \
            if "expected_latency_ms" in summary else ""
        log.info("epoch %d/%d  loss %s  arch_loss %s%s  (%.0fs, ETA %s)", epoch + 1, epochs,
                 _fmt(summary.get("loss")), _fmt(summary.get("arch_loss")), latency, record["epoch_s"],
                 format_eta(time.time() - started, epoch + 1 - start, epochs - start))
        save_checkpoint(run_dir / "last.pt", {"model": supernet.state_dict(), "strategy": strategy.state_dict(),
                                              "rng": rng_state(), "epoch": epoch, **stopper.state_dict()})
        if stopper.stopped:
            log.info("early stop (%s): %s; returning the epoch-%d genotype", early_stop, reason, stopper.kept_epoch)
            return Genotype.from_dict(stopper.kept)
    return strategy.result()


EARLY_STOP_RULES = ("darts_plus", "skip_rise")
DARTS_PLUS_SKIPS = 2  # DARTS+ (Liang et al. 2019): stop once the normal cell holds 2 or more skip connections


class EarlyStop:
    """Ends a search early on the decoded genotype of each epoch; `rule` is one of:

    - `darts_plus`: DARTS+'s rule (Liang et al. 2019, "DARTS+: Improved Differentiable Architecture
      Search with Early Stopping", criterion 1): stop as soon as the normal cell (`genotype["normal"]`)
      holds 2 or more skip_connect edges; the reduction and fusion cells are not counted. As in the
      paper, the architecture at the stopping point is returned: that epoch's genotype.
    - `skip_rise`: this project's own guard: stop as soon as the whole genotype holds more
      skip_connect than at the epoch before, and return that earlier epoch's genotype.
    - None: never stop.

    Epochs in which the architecture has not moved yet (a strategy's weight-only warmup) are not
    judged: their genotype is the decoding of the random initial architecture weights.
    """

    def __init__(self, rule: str | None):
        if rule is not None and rule not in EARLY_STOP_RULES:
            raise UserError(f"early_stop={rule!r} is not a rule; use one of {', '.join(EARLY_STOP_RULES)} "
                            "or null")
        self.rule, self.skips_seen, self.kept, self.kept_epoch, self.stopped = rule, [], None, -1, False

    def check_space(self, sample: Genotype) -> None:
        """Before any work: refuse a rule that cannot read this space's genotypes (`sample`: any member)."""
        if self.rule == "darts_plus":
            normal_cell(sample, self.rule)

    def judge(self, genotype: Genotype, epoch: int, moving: bool = True) -> str | None:
        """Why the search stops after `epoch` (also sets `stopped` and `kept`), or None to go on."""
        if self.rule is None or not moving:
            return None
        reason = None
        if self.rule == "darts_plus":
            skips = normal_cell(genotype, self.rule).count("skip_connect")
            if skips >= DARTS_PLUS_SKIPS:
                reason = f"the normal cell holds {skips} skip connections (DARTS+ stops at {DARTS_PLUS_SKIPS})"
        else:
            skips = count_op(genotype.genotype, "skip_connect")
            if self.skips_seen and skips > self.skips_seen[-1]:
                reason = f"skip connections rose from {self.skips_seen[-1]} to {skips}"
            self.skips_seen.append(skips)
        self.stopped = reason is not None
        if reason is None or self.rule == "darts_plus":  # skip_rise hands back the epoch before
            self.kept, self.kept_epoch = genotype.to_dict(), epoch
        return reason

    def state_dict(self) -> dict[str, Any]:
        return {"skips_seen": self.skips_seen, "kept_genotype": self.kept, "kept_epoch": self.kept_epoch,
                "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skips_seen = list(state.get("skips_seen", []))
        self.kept, self.kept_epoch = state.get("kept_genotype"), int(state.get("kept_epoch", -1))
        self.stopped = bool(state.get("stopped", False))


def normal_cell(genotype: Genotype, rule: str) -> list[str]:
    """The op names of the genotype's normal cell (DARTS's `normal`: a list of [op, input] edges)."""
    cell = genotype.genotype.get("normal") if isinstance(genotype.genotype, dict) else None
    if not isinstance(cell, list):
        raise UserError(f"early_stop={rule} counts skip connections in the normal cell, but this space's "
                        "genotype has no 'normal' cell; use early_stop=skip_rise or null")
    return [edge[0] if isinstance(edge, (list, tuple)) else edge for edge in cell]


def arch_moving(strategy: Any) -> bool:
    """False while a strategy is still in its weight-only warmup (`steps` <= `warmup_steps`)."""
    warmup = getattr(strategy, "warmup_steps", None)
    return warmup is None or getattr(strategy, "steps", warmup + 1) > warmup


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def arch_weights_record(supernet: torch.nn.Module, epoch: int) -> dict:
    """The supernet's softmaxed architecture weights of this epoch, as plain lists."""
    weights = {name: w.tolist() for name, w in supernet.arch_weights().items()}
    return {"epoch": epoch, "primitives": list(getattr(supernet, "primitives", ())), "weights": weights}


def count_op(tree: Any, name: str) -> int:
    """How often op `name` appears in a genotype's nested lists and dicts."""
    if isinstance(tree, dict):
        return sum(count_op(v, name) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(count_op(v, name) for v in tree)
    return int(tree == name)


def _epoch(strategy: Any, train_loader, arch_loader, steps: int, device: torch.device,
           epoch: int, epochs: int, bad_images: BadImageMonitor | None = None) -> dict[str, float]:
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    arch_iter = forever(arch_loader)
    if bad_images is not None:
        bad_images.start_epoch()
    bar = tqdm(zip(range(steps), forever(train_loader)), total=steps, desc=f"search {epoch + 1}/{epochs}",
               disable=None, leave=False, dynamic_ncols=True)
    for _, batch in bar:
        arch_batch = next(arch_iter)
        if bad_images is not None:  # skipped unreadable images; UserError past data.max_bad_fraction
            bad_images.update(batch.get("meta", {}))
            bad_images.update(arch_batch.get("meta", {}))
        out = strategy.step(to_device(batch, device), to_device(arch_batch, device))
        for key, value in out.items():
            totals[key] = totals.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
        if "loss" in out:
            bar.set_postfix(loss=f"{out['loss']:.5f}")
    return {key: value / counts[key] for key, value in totals.items()}
