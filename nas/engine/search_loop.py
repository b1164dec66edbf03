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
from nas.genotype import Genotype


def run_search(strategy: Any, supernet: torch.nn.Module, train_loader, arch_loader, epochs: int,
               device: torch.device, run_dir: Path, resume_from: Path | None,
               steps_per_epoch: int | None = None,
               bad_images: BadImageMonitor | None = None, stop_on_skip_rise: bool = False) -> Genotype:
    """`stop_on_skip_rise`: end the search (DARTS+-style) as soon as the decoded genotype holds more
    skip connections than the epoch before, returning that earlier genotype. `steps_per_epoch`
    (None: one pass over `train_loader`) may exceed the loader: it is cycled."""
    start, skips_seen, kept, stopped = 0, [], None, False
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        supernet.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"])
        start, skips_seen = state["epoch"] + 1, list(state.get("skips_seen", []))
        kept, stopped = state.get("kept_genotype"), bool(state.get("stopped", False))
        log.info("resumed from %s at epoch %d/%d", resume_from, start, epochs)
    if stopped:
        return Genotype.from_dict(kept)
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
        skips = count_op(genotype.genotype, "skip_connect")
        stopped = stop_on_skip_rise and bool(skips_seen) and skips > skips_seen[-1]
        skips_seen.append(skips)
        record = {"epoch": epoch, **summary, "epoch_s": round(time.time() - t0, 2),
                  "skip_connects": skips, "genotype": genotype.genotype}
        if bad_images is not None and bad_images.report():
            record["skipped_images"] = dict(bad_images.paths)
        metrics.write(record)
        log.info("epoch %d/%d  loss %s  arch_loss %s  (%.0fs, ETA %s)", epoch + 1, epochs,
                 _fmt(summary.get("loss")), _fmt(summary.get("arch_loss")), record["epoch_s"],
                 format_eta(time.time() - started, epoch + 1 - start, epochs - start))
        if not stopped:
            kept = genotype.to_dict()
        save_checkpoint(run_dir / "last.pt", {"model": supernet.state_dict(), "strategy": strategy.state_dict(),
                                              "rng": rng_state(), "epoch": epoch, "skips_seen": skips_seen,
                                              "kept_genotype": kept, "stopped": stopped})
        if stopped:
            log.info("skip connections rose from %d to %d: stopping early with the epoch-%d genotype",
                     skips_seen[-2], skips, epoch)
            return Genotype.from_dict(kept)
    return strategy.result()


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
