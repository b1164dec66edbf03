"""Retraining a standalone network: train, evaluate with flip test, keep the best checkpoint.

`last.pt` (everything a resume needs) is written after every epoch; `best.pt` holds the weights
with the best validation score so far, by `primary_metric` (the dataset's: "AP" for COCO-style data,
"PCKh" for MPII). Both are written atomically. Each evaluation's predictions go to
`last_predictions.json`, and those of the best epoch to `best_predictions.json`, written just before
`best.pt`, so the best checkpoint, its scores and its predictions always belong to the same epoch.
A gradient that is NaN or infinite stops the run before the optimizer step (exit status 3 at the entry
point), so neither the weights nor `last.pt` ever hold the result of a bad step (under amp=fp16 the
GradScaler skips such a step instead, as mixed precision expects now and then).

Under torch.distributed the network trains wrapped in DistributedDataParallel (`train_net`), each rank
on its share of every batch; rank 0 alone writes checkpoints, metrics and predictions; the evaluation
is split across ranks by the caller's `evaluate`, which returns the same scores on every rank.
A `StopRequests` polled after every step checkpoints inside an epoch (a signal, or every N minutes):
`last.pt` then holds the position in the epoch and the loss so far, and a resume continues at the next
batch of the same order (`nas.engine.sampling`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from nas.data.bad_images import BadImageMonitor
from nas.engine import distributed
from nas.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.engine.guards import check_finite, check_finite_grads
from nas.engine.schedule import make_scheduler
from nas.pose.loss import supervised_loss
from nas.engine.precision import autocast, grad_scaler
from nas.engine.preemption import StopRequests
from nas.engine.runtime import MetricsLog, format_eta, log, to_device
from nas.engine.sampling import epoch_batches
from nas.utils.io import atomic_write_text

# model -> (scores, the COCO-format predictions they were computed from)
Evaluate = Callable[[nn.Module], tuple[dict[str, float], list[dict]]]
BEST_PREDICTIONS = "best_predictions.json"  # the predictions of best.pt's epoch
LAST_PREDICTIONS = "last_predictions.json"  # the predictions of the latest evaluation


class Trainer:
    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 epochs: int, steps_per_epoch: int, device: torch.device, lr_min: float = 0.0,
                 grad_clip: float | None = None, best_extra: dict[str, Any] | None = None,
                 primary_metric: str = "AP", bad_images: BadImageMonitor | None = None,
                 amp: str | None = None, train_net: nn.Module | None = None,
                 stops: StopRequests | None = None, tracker: Any = None, schedule: dict[str, Any] | None = None,
                 loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor] | None = None):
        """`schedule`: keyword arguments of `nas.engine.schedule.make_scheduler` (kind, steps, factor,
        warmup_iters, warmup_ratio); default cosine annealing to `lr_min`. `loss_fn(net, batch)`: the loss of
        a batch that is not one of images (clips of video: nas.engine.clips); default the network's heatmaps
        on batch["image"] against its targets."""
        self.model, self.criterion, self.optimizer, self.loss_fn = model, criterion, optimizer, loss_fn
        self.net = model if train_net is None else train_net  # what trains: the model, its DDP or compiled form
        self.best_extra = dict(best_extra or {})  # stored in best.pt, e.g. the genotype
        self.scheduler = make_scheduler(optimizer, **{"kind": "cosine", **(schedule or {})}, epochs=epochs,
                                        steps_per_epoch=steps_per_epoch, lr_min=lr_min)
        self.epochs, self.device, self.grad_clip = epochs, device, grad_clip
        self.steps_per_epoch = steps_per_epoch  # an epoch ends after this many steps (max_steps_per_epoch)
        self.bad_images = bad_images  # counts the skipped unreadable training images of each epoch
        self.primary = primary_metric  # the key of the evaluation scores that picks best.pt
        self.amp, self.scaler = amp, grad_scaler(amp, device)
        self.stops, self.tracker = stops, tracker  # tracker: a nas.tracking.ExperimentLogger (rank 0's)
        self.step_count, self.epoch, self.best = 0, 0, {primary_metric: -1.0, "epoch": -1}
        self.last: dict[str, Any] = {}  # the latest evaluation's scores and epoch
        self.partial: dict[str, Any] | None = None  # the position inside an epoch a resume starts at
        self.run_dir: Path | None = None

    def state_dict(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resume needs; with `partial` ({"step", "total", "n"}), a checkpoint inside the
        current epoch (its "epoch" is then the last finished one, as at an epoch end)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                 "epoch": self.epoch if partial is None else self.epoch - 1, "step": self.step_count,
                 "best": dict(self.best), "last": dict(self.last), "world_size": distributed.world().size}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if partial is not None:
            state["partial"] = {"epoch": self.epoch, **partial}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.step_count, self.best = state["epoch"] + 1, state["step"], dict(state["best"])
        self.last = dict(state.get("last", {}))  # absent from checkpoints of older versions
        self.partial = state.get("partial")
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if int(state.get("world_size", 1)) != distributed.world().size:
            log.warning("the checkpoint was written by %s process(es), this run has %d: the global batch "
                        "changes from here on", state.get("world_size", 1), distributed.world().size)

    def _checkpoint(self, partial: dict[str, Any] | None = None) -> None:
        if distributed.is_main():
            save_checkpoint(self.run_dir / "last.pt", self.state_dict(partial))
        if self.stops is not None:
            self.stops.saved()

    def train_epoch(self, loader) -> float:
        """The epoch's steps (from a resumed position when there is one); the mean loss over all ranks."""
        self.net.train()
        start = int(self.partial["step"]) if self.partial else 0
        total, n = (float(self.partial["total"]), int(self.partial["n"])) if self.partial else (0.0, 0)
        self.partial = None
        if self.bad_images is not None:
            self.bad_images.start_epoch()
        bar = tqdm(epoch_batches(loader, self.epoch, self.steps_per_epoch, start), total=self.steps_per_epoch,
                   initial=start, desc=f"train {self.epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True,
                   disable=None if distributed.is_main() else True)
        for step, batch in enumerate(bar, start=start):
            if self.bad_images is not None:
                self.bad_images.update(batch.get("meta", {}))  # UserError past data.max_bad_fraction
            value = self._step(to_device(batch, self.device))
            total, n = total + value, n + 1
            bar.set_postfix(loss=f"{value:.5f}")
            request = self.stops.poll() if self.stops is not None and step + 1 < self.steps_per_epoch else None
            if request is not None:
                self._checkpoint({"step": step + 1, "total": total, "n": n})
                log.info("checkpoint at epoch %d, step %d/%d (%s)", self.epoch + 1, step + 1,
                         self.steps_per_epoch, request)
                if request == "signal":
                    self.stops.stop(self.run_dir, self.epoch, step + 1)
        return total / max(n, 1)

    def _step(self, batch: dict[str, Any]) -> float:
        if self.loss_fn is not None:
            with autocast(self.amp, self.device):
                loss = self.loss_fn(self.net, batch).float()
        else:
            with autocast(self.amp, self.device):
                heatmaps = self.net(batch["image"])
            loss = supervised_loss(self.criterion, heatmaps, batch, bool(self.amp))  # one or several heatmap sets
        # the mean over ranks (one all-reduce) is NaN/inf when any rank's loss is, and is the same on every
        # rank: checked here without a second collective, it stops all ranks at the same step
        value = distributed.mean_scalar(float(loss.detach()), self.device)
        check_finite(torch.tensor(value), "training loss (mean over ranks)" if distributed.world().enabled
                     else "training loss", self.step_count, agreed=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
        self.scaler.unscale_(self.optimizer)
        if not self.scaler.is_enabled():  # fp16: an overflow is the scaler's to skip, not an error
            check_finite_grads(self.model.parameters(), "network", self.step_count)  # before clipping
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step_count += 1
        return value

    def fit(self, loader, evaluate: Evaluate, eval_every: int, run_dir: Path,
            resume_from: Path | None) -> dict[str, dict[str, Any]]:
        """Train to `self.epochs`; returns {"best": scores and epoch of best.pt, "last": those of the
        final evaluation}."""
        self.run_dir = run_dir
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from))
            where = f", step {self.partial['step']}" if self.partial else ""
            log.info("resumed from %s at epoch %d/%d%s", resume_from, self.epoch + 1, self.epochs, where)
        main = distributed.is_main()
        if resume_from is not None and self.tracker is not None and main:
            from nas.tracking import backfill
            backfill(self.tracker, run_dir, self.epoch)  # a tracker new to this run gets the epochs before
        metrics = MetricsLog(run_dir / "metrics.jsonl", keep_before_epoch=self.epoch) if main else None
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
            if metrics is not None:
                metrics.write(record)
            if self.tracker is not None and main:
                self.tracker.log_metrics(record, step=self.epoch)
            log.info("epoch %d/%d  loss %.6f%s  (%.0fs, ETA %s)", self.epoch + 1, self.epochs, record["loss"],
                     f"  {self.primary} {record[self.primary]:.4f}" if self.primary in record else "",
                     record["epoch_s"],
                     format_eta(time.time() - started, self.epoch + 1 - first, self.epochs - first))
            self._checkpoint()
            self.epoch += 1
            if self.stops is not None and self.epoch < self.epochs and self.stops.poll() == "signal":
                self.stops.stop(run_dir, self.epoch, 0)  # the epoch's checkpoint is the one to continue from
        return {"best": dict(self.best), "last": dict(self.last)}

    def _evaluate(self, evaluate: Evaluate, run_dir: Path) -> dict[str, float]:
        scores, predictions = evaluate(self.model)
        if self.primary not in scores:
            raise KeyError(f"evaluation returned no {self.primary!r} (got {', '.join(scores)})")
        improved = scores[self.primary] > self.best.get(self.primary, -1.0)
        if improved:
            self.best = {**scores, "epoch": self.epoch}
        if distributed.is_main():
            text = json.dumps(predictions) + "\n"
            if improved:
                atomic_write_text(run_dir / BEST_PREDICTIONS, text)  # first: best.pt commits the pair
                save_checkpoint(run_dir / "best.pt", {**self.best_extra, "model": self.model.state_dict(),
                                                      "epoch": self.epoch, "scores": dict(scores)})
            atomic_write_text(run_dir / LAST_PREDICTIONS, text)
        self.last = {**scores, "epoch": self.epoch}
        return scores
