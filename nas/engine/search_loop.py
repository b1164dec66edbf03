"""The search loop: feed a strategy (train batch, held-out batch) pairs, checkpoint every epoch.

A checkpoint is written at the end of each epoch with the supernet, the strategy's optimizers and
schedulers, the RNG states and the epoch counter, so a killed search resumed from it replays the
remaining epochs exactly as an uninterrupted run would (same machine, same seed).
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from nas.data.bad_images import BadImageMonitor
from nas.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.engine import distributed
from nas.engine.preemption import StopRequests
from nas.engine.runtime import MetricsLog, format_eta, log, to_device
from nas.engine.sampling import epoch_batches
from nas.errors import UserError
from nas.genotype import Genotype


def run_search(strategy: Any, supernet: torch.nn.Module, train_loader, arch_loader, epochs: int,
               device: torch.device, run_dir: Path, resume_from: Path | None,
               steps_per_epoch: int | None = None,
               bad_images: BadImageMonitor | None = None, early_stop: str | None = None,
               stops: StopRequests | None = None, tracker: Any = None) -> Genotype:
    """Run the remaining epochs and return the genotype. `early_stop` names a rule of `EarlyStop`
    (None: every epoch runs). `steps_per_epoch` (None: one pass over `train_loader`) may exceed the
    loader: it is cycled. `stops` (signals, periodic checkpoints) is polled after every step: a
    checkpoint inside an epoch resumes at the next step with the same batches. Under torch.distributed
    every rank runs this loop on its share of each batch; rank 0 alone writes. `tracker` (a
    `nas.tracking.ExperimentLogger`) gets each epoch's metrics and architecture weights."""
    start, stopper, partial = 0, EarlyStop(early_stop), None
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        supernet.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"])
        start = state["epoch"] + 1
        stopper.load_state_dict(state)
        partial = state.get("partial")
        _check_world(state)
        log.info("resumed from %s at epoch %d/%d%s", resume_from, start + 1, epochs,
                 f", step {partial['step']}" if partial else "")
    if stopper.stopped:
        return Genotype.from_dict(stopper.kept)
    main = distributed.is_main()
    metrics = MetricsLog(run_dir / "metrics.jsonl", keep_before_epoch=start) if main else None
    arch_log = MetricsLog(run_dir / "arch_weights.jsonl", keep_before_epoch=start) \
        if main and hasattr(supernet, "arch_weights") else None  # softmaxed weights per epoch, for plots
    steps = len(train_loader) if steps_per_epoch is None else steps_per_epoch
    started = time.time()
    if tracker is not None and main and resume_from is not None:
        from nas.tracking import backfill
        backfill(tracker, run_dir, start)  # a tracker new to this run gets the epochs before

    def checkpoint(epoch: int, part: dict | None = None) -> None:
        if main:
            save_checkpoint(run_dir / "last.pt", {
                "model": supernet.state_dict(), "strategy": strategy.state_dict(), "rng": rng_state(),
                "epoch": epoch if part is None else epoch - 1, **stopper.state_dict(),
                "world_size": distributed.world().size, **({"partial": part} if part else {})})
        if stops is not None:
            stops.saved()

    for epoch in range(start, epochs):
        t0 = time.time()
        n_steps = strategy.epoch_steps(epoch) if hasattr(strategy, "epoch_steps") else steps
        resume_part = partial if partial is not None and partial["epoch"] == epoch else None
        summary = _epoch(strategy, train_loader, arch_loader, n_steps, device, epoch, epochs, bad_images,
                         resume_part, stops, checkpoint, run_dir)
        partial = None
        summary.update(strategy.end_epoch())  # before result(): a strategy may rank candidates here
        genotype = strategy.result()
        _check_same_genotype(genotype)
        if arch_log is not None:
            arch_record = arch_weights_record(supernet, epoch)
            arch_log.write(arch_record)
            if tracker is not None:
                tracker.log_arch_weights(arch_record)
        reason = stopper.judge(genotype, epoch, arch_moving(strategy))
        record = {"epoch": epoch, **summary, "epoch_s": round(time.time() - t0, 2),
                  "skip_connects": count_op(genotype.genotype, "skip_connect"), "genotype": genotype.genotype}
        if reason:
            record["early_stop"] = reason
        if bad_images is not None and bad_images.report():
            record["skipped_images"] = dict(bad_images.paths)
        if metrics is not None:
            metrics.write(record)
        if tracker is not None and main:
            tracker.log_metrics(record, step=epoch)
        latency = f"  expected latency {summary['expected_latency_ms']:.2f} ms" \
            if "expected_latency_ms" in summary else ""
        log.info("epoch %d/%d  loss %s  arch_loss %s%s  (%.0fs, ETA %s)", epoch + 1, epochs,
                 _fmt(summary.get("loss")), _fmt(summary.get("arch_loss")), latency, record["epoch_s"],
                 format_eta(time.time() - started, epoch + 1 - start, epochs - start))
        checkpoint(epoch)
        if stops is not None and epoch + 1 < epochs and not stopper.stopped and stops.poll() == "signal":
            stops.stop(run_dir, epoch + 1, 0)  # the epoch's checkpoint is the one to continue from
        if stopper.stopped:
            log.info("early stop (%s): %s; returning the epoch-%d genotype", early_stop, reason, stopper.kept_epoch)
            return Genotype.from_dict(stopper.kept)
    return strategy.result()


def _check_same_genotype(genotype: Genotype) -> None:
    """Every rank must decode the same genotype (NNI's DARTS under DDP did not, nni#5013): checked at
    every epoch end, so a divergence stops the run at once instead of emitting one rank's choice."""
    if not distributed.world().enabled:
        return
    seen = distributed.all_gather_objects(genotype.genotype)
    if any(g != seen[0] for g in seen[1:]):
        raise RuntimeError("the ranks decoded different genotypes (their architecture parameters diverged); "
                           f"rank 0: {seen[0]}, rank 1: {seen[1]}. This is a bug: please report it")


def _check_world(state: dict) -> None:
    """A checkpoint resumed by another number of processes changes the global batch: say so."""
    saved, now = int(state.get("world_size", 1)), distributed.world().size
    if saved != now:
        log.warning("the checkpoint was written by %d process(es), this run has %d: the global batch "
                    "changes from here on (per-process batch x processes)", saved, now)


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
    """The supernet's softmaxed architecture weights of this epoch, as plain lists; with "labels" ({key: a
    name per row or entry}) where the supernet names them (`arch_weight_labels()`, e.g. the fabric's cells)."""
    weights = {name: w.tolist() for name, w in supernet.arch_weights().items()}
    record = {"epoch": epoch, "primitives": list(getattr(supernet, "primitives", ())), "weights": weights}
    if hasattr(supernet, "arch_weight_labels"):
        record["labels"] = supernet.arch_weight_labels()
    return record


def count_op(tree: Any, name: str) -> int:
    """How often op `name` appears in a genotype's nested lists and dicts."""
    if isinstance(tree, dict):
        return sum(count_op(v, name) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(count_op(v, name) for v in tree)
    return int(tree == name)


def _epoch(strategy: Any, train_loader, arch_loader, steps: int, device: torch.device,
           epoch: int, epochs: int, bad_images: BadImageMonitor | None = None, partial: dict | None = None,
           stops: StopRequests | None = None, checkpoint: Callable[..., None] | None = None,
           run_dir: Path | None = None) -> dict[str, float]:
    """One epoch's steps from `partial["step"]` (a checkpoint inside the epoch) or 0; the metrics'
    means. Each step's batch and held-out batch are the step's own (`epoch_batches`), so a resumed
    epoch sees the batches the interrupted one would have."""
    first = int(partial["step"]) if partial else 0
    totals: dict[str, float] = dict(partial["totals"]) if partial else {}
    counts: dict[str, int] = {k: int(v) for k, v in partial["counts"].items()} if partial else {}
    if bad_images is not None:
        bad_images.start_epoch()
    # no held-out loader (a one-level search): the step's held-out batch is its training batch
    held_out = epoch_batches(arch_loader, epoch, steps, first) if arch_loader is not None else itertools.repeat(None)
    batches = zip(range(first, steps), epoch_batches(train_loader, epoch, steps, first), held_out)
    bar = tqdm(batches, total=steps, initial=first, desc=f"search {epoch + 1}/{epochs}",
               disable=None if distributed.is_main() else True, leave=False, dynamic_ncols=True)
    for step, batch, arch_batch in bar:
        if bad_images is not None:  # skipped unreadable images; UserError past data.max_bad_fraction
            bad_images.update(batch.get("meta", {}))
            if arch_batch is not None:
                bad_images.update(arch_batch.get("meta", {}))
        batch = to_device(batch, device)
        out = strategy.step(batch, batch if arch_batch is None else to_device(arch_batch, device))
        for key, value in out.items():
            totals[key] = totals.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
        if "loss" in out:
            bar.set_postfix(loss=f"{out['loss']:.5f}")
        request = stops.poll() if stops is not None and step + 1 < steps else None
        if request is not None and checkpoint is not None:
            checkpoint(epoch, {"epoch": epoch, "step": step + 1, "totals": totals, "counts": counts})
            log.info("checkpoint at epoch %d, step %d/%d (%s)", epoch + 1, step + 1, steps, request)
            if request == "signal":
                stops.stop(run_dir, epoch, step + 1)
    return {key: value / counts[key] for key, value in totals.items()}
