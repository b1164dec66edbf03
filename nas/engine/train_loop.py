"""Retraining a standalone network: train, evaluate with flip test, keep the best checkpoint.

`last.pt` (everything a resume needs) is written after every epoch; `best.pt` holds the weights
with the best validation score so far, by `primary_metric` (the dataset's: "AP" for COCO-style data,
"PCKh" for MPII). Both are written atomically. Each evaluation's predictions go to
`last_predictions.json`, and those of the best epoch to `best_predictions.json`, written just before
`best.pt`, so the best checkpoint, its scores and its predictions always belong to the same epoch.
A gradient that is NaN or infinite stops the run before the optimizer step (exit status 3 at the entry
point), so neither the weights nor `last.pt` ever hold the result of a bad step.
"""
from __future__ import annotations

import json
import itertools
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from nas.data.bad_images import BadImageMonitor
from nas.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.engine.guards import check_finite, check_finite_grads
from nas.engine.runtime import MetricsLog, format_eta, log, to_device
from nas.utils.io import atomic_write_text

# model -> (scores, the COCO-format predictions they were computed from)
Evaluate = Callable[[nn.Module], tuple[dict[str, float], list[dict]]]
BEST_PREDICTIONS = "best_predictions.json"  # the predictions of best.pt's epoch
LAST_PREDICTIONS = "last_predictions.json"  # the predictions of the latest evaluation


class Trainer:
    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 epochs: int, steps_per_epoch: int, device: torch.device, lr_min: float = 0.0,
                 grad_clip: float | None = None, best_extra: dict[str, Any] | None = None,
                 primary_metric: str = "AP", bad_images: BadImageMonitor | None = None):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.best_extra = dict(best_extra or {})  # stored in best.pt, e.g. the genotype
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, max(1, epochs * steps_per_epoch), lr_min)
        self.epochs, self.device, self.grad_clip = epochs, device, grad_clip
        self.steps_per_epoch = steps_per_epoch  # an epoch ends after this many steps (max_steps_per_epoch)
        self.bad_images = bad_images  # counts the skipped unreadable training images of each epoch
        self.primary = primary_metric  # the key of the evaluation scores that picks best.pt
        self.step_count, self.epoch, self.best = 0, 0, {primary_metric: -1.0, "epoch": -1}
        self.last: dict[str, Any] = {}  # the latest evaluation's scores and epoch

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                "epoch": self.epoch, "step": self.step_count, "best": dict(self.best),
                "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.step_count, self.best = state["epoch"] + 1, state["step"], dict(state["best"])
        self.last = dict(state.get("last", {}))  # absent from checkpoints of older versions

    def train_epoch(self, loader) -> float:
        self.model.train()
        total, n = 0.0, 0
        if self.bad_images is not None:
            self.bad_images.start_epoch()
        bar = tqdm(itertools.islice(loader, self.steps_per_epoch), total=self.steps_per_epoch, desc=f"train {self.epoch + 1}/{self.epochs}", disable=None, leave=False,
                   dynamic_ncols=True)
        for batch in bar:
            if self.bad_images is not None:
                self.bad_images.update(batch.get("meta", {}))  # UserError past data.max_bad_fraction
            batch = to_device(batch, self.device)
            loss = self.criterion(self.model(batch["image"]), batch["target"], batch["target_weight"])
            value = check_finite(loss, "training loss", self.step_count)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check_finite_grads(self.model.parameters(), "network", self.step_count)  # before clipping
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step_count += 1
            total, n = total + value, n + 1
            bar.set_postfix(loss=f"{value:.5f}")
        return total / max(n, 1)

    def fit(self, loader, evaluate: Evaluate, eval_every: int, run_dir: Path,
            resume_from: Path | None) -> dict[str, dict[str, Any]]:
        """Train to `self.epochs`; returns {"best": scores and epoch of best.pt, "last": those of the
        final evaluation}."""
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from))
            log.info("resumed from %s at epoch %d/%d", resume_from, self.epoch, self.epochs)
        metrics = MetricsLog(run_dir / "metrics.jsonl", keep_before_epoch=self.epoch)
        started, first = time.time(), self.epoch
        while self.epoch < self.epochs:
            t0 = time.time()
            record: dict[str, Any] = {"epoch": self.epoch, "loss": self.train_epoch(loader),
                                      "lr": self.optimizer.param_groups[0]["lr"]}
            if self.bad_images is not None and self.bad_images.report():
                record["skipped_images"] = dict(self.bad_images.paths)
            last = self.epoch == self.epochs - 1
            if last or (eval_every > 0 and (self.epoch + 1) % eval_every == 0):
                record.update(self._evaluate(evaluate, run_dir))
            record["epoch_s"] = round(time.time() - t0, 2)
            metrics.write(record)
            log.info("epoch %d/%d  loss %.6f%s  (%.0fs, ETA %s)", self.epoch + 1, self.epochs, record["loss"],
                     f"  {self.primary} {record[self.primary]:.4f}" if self.primary in record else "",
                     record["epoch_s"],
                     format_eta(time.time() - started, self.epoch + 1 - first, self.epochs - first))
            save_checkpoint(run_dir / "last.pt", self.state_dict())
            self.epoch += 1
        return {"best": dict(self.best), "last": dict(self.last)}

    def _evaluate(self, evaluate: Evaluate, run_dir: Path) -> dict[str, float]:
        scores, predictions = evaluate(self.model)
        if self.primary not in scores:
            raise KeyError(f"evaluation returned no {self.primary!r} (got {', '.join(scores)})")
        text = json.dumps(predictions) + "\n"
        if scores[self.primary] > self.best.get(self.primary, -1.0):
            self.best = {**scores, "epoch": self.epoch}
            atomic_write_text(run_dir / BEST_PREDICTIONS, text)  # first: best.pt commits the pair
            save_checkpoint(run_dir / "best.pt", {**self.best_extra, "model": self.model.state_dict(),
                                                  "epoch": self.epoch, "scores": dict(scores)})
        atomic_write_text(run_dir / LAST_PREDICTIONS, text)
        self.last = {**scores, "epoch": self.epoch}
        return scores
