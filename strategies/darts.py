"""DARTS (Liu et al., 2019): alternate a weight step on the training split and an architecture
step on a held-out split. First order by default; `unrolled=True` is the second-order
approximation (the architecture gradient through one virtual weight step, with the Hessian-vector
product taken by finite differences as in the DARTS paper).

Works for any space whose supernet exposes `arch_parameters()` and `weight_parameters()`.

`one_level=True` is PNFS's "sync" search (and the one-level baseline of the DARTS literature): no held-out
split; every step takes one loss on a training batch and updates the weights and the architecture
parameters together from its gradients (each with its own optimizer: `weight_optimizer`,
`arch_optimizer`; PNFS uses one Adam over both). The search entry point then trains on the whole training
set and loads no held-out batches. Not with `unrolled` (nothing to unroll).

Under torch.distributed each rank holds the whole supernet and its share of every batch; every
gradient (of the weights, of the architecture parameters, and the three of the second-order step:
the virtual step's, the validation loss's at w', the two finite-difference probes') is averaged over
the ranks before it is used, so the weights and alphas stay identical on every rank and equal those of
one process on the concatenated batch (up to BatchNorm's per-rank batch statistics and float order).
DDP is not used: it reduces only what `backward()` produces, not `torch.autograd.grad`'s results.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nas.engine import distributed
from nas.engine.precision import autocast, grad_scaler
from nas.engine.guards import (NonFiniteLossError, check_finite, check_finite_grads,
                               check_finite_tensors)
from nas.errors import UserError
from nas.genotype import Genotype

log = logging.getLogger("posenas")
Batch = dict[str, torch.Tensor]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _require_plain_sgd(opt: torch.optim.Optimizer) -> None:
    """The virtual step of second-order DARTS replays SGD's update (momentum, weight decay); with
    another optimizer, or Nesterov or dampening, it would differentiate through the wrong step."""
    group = opt.param_groups[0]
    if type(opt) is not torch.optim.SGD or group.get("nesterov") or group.get("dampening", 0):
        raise UserError("second-order DARTS (strategy.unrolled=true) needs torch.optim.SGD without "
                        "nesterov or dampening as strategy.weight_optimizer; change it or set "
                        "strategy.unrolled=false")


class Darts:
    def __init__(self, space: Any, supernet: nn.Module, criterion: nn.Module,
                 weight_optimizer: OptimizerFactory, arch_optimizer: OptimizerFactory,
                 epochs: int, steps_per_epoch: int, unrolled: bool = False,
                 warmup_epochs: float = 0.0, grad_clip: float = 5.0, lr_min: float = 0.0,
                 fd_eps: float = 0.01, latency_weight: float = 0.0, latency_table: str | None = None,
                 input_size: tuple[int, int] | None = None, run_dir: str | None = None,
                 amp: str | None = None, one_level: bool = False):
        if not hasattr(supernet, "arch_parameters"):
            raise UserError(f"search space {space.name!r} has no architecture parameters, so a "
                            "gradient strategy cannot search it; pick another strategy or space")
        self.space, self.supernet, self.criterion = space, supernet, criterion
        self.weights = list(supernet.weight_parameters())
        self.alphas = list(supernet.arch_parameters())
        self.w_opt = weight_optimizer(self.weights)
        if unrolled:
            _require_plain_sgd(self.w_opt)
        self.a_opt = arch_optimizer(self.alphas)
        total = max(1, epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, total, lr_min)
        self.unrolled, self.grad_clip = unrolled, grad_clip
        if one_level and unrolled:
            raise UserError("strategy.one_level=true updates weights and architecture from one loss; there is no "
                            "virtual step to unroll: set strategy.unrolled=false")
        self.one_level = one_level
        if unrolled and amp is not None:
            raise UserError(f"amp={amp} with second-order DARTS: its finite-difference Hessian-vector product "
                            "(weights moved by 0.01 / ||dw||) is below half precision's resolution, so the "
                            "architecture gradient would be noise; use amp=null, or strategy.unrolled=false")
        self.amp, self.device = amp, next(supernet.parameters()).device
        self.scaler = grad_scaler(amp, self.device)  # fp16 only: bf16 needs no loss scaling
        self.arch_skipped = 0  # fp16 architecture steps skipped on an overflowed gradient
        self.last_latency = float("nan")
        self.fd_eps = fd_eps  # finite-difference step of the Hessian-vector product, over ||vector||
        self.warmup_steps = int(warmup_epochs * steps_per_epoch)
        self.steps = 0
        if latency_weight < 0:
            raise UserError(f"strategy.latency_weight={latency_weight} must be >= 0 (0: accuracy only)")
        if latency_weight > 0 and not (hasattr(space, "edge_latency") and hasattr(supernet, "alphas")):
            raise UserError(f"strategy.latency_weight needs a space that can time its ops per edge; "
                            f"{space.name!r} cannot: set strategy.latency_weight=0")
        self.latency_weight, self.input_size = latency_weight, input_size
        self.latency_table, self.run_dir = latency_table, run_dir
        self.latency: dict[str, torch.Tensor] | None = None  # measured at the first architecture step
        # the ops the latency term prices: all but `none` (computed once, used every architecture step)
        self.priced = ([k for k, p in enumerate(supernet.primitives) if p != "none"]
                       if latency_weight > 0 else [])
        if latency_weight > 0 and latency_table:
            self.latency = self._latency_table()  # a bad file fails now, not after the warmup
        elif latency_table:
            log.warning("strategy.latency_table is not used: strategy.latency_weight is 0")

    def loss(self, batch: Batch) -> torch.Tensor:
        with autocast(self.amp, self.device):
            heatmaps = self.supernet(batch["image"])
        return self.criterion(heatmaps.float() if self.amp else heatmaps, batch["target"], batch["target_weight"])

    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        self.supernet.train()
        metrics: dict[str, float] = {}
        if self.one_level:
            return self._one_level_step(train_batch, metrics)
        if self.steps >= self.warmup_steps:
            metrics["arch_loss"] = self._arch_step(train_batch, val_batch)
            if self.latency_weight > 0:
                metrics["expected_latency_ms"] = self.last_latency
        metrics["loss"] = self._weight_step(train_batch)
        metrics["lr"] = self.w_opt.param_groups[0]["lr"]
        self.steps += 1
        return metrics

    def _weight_step(self, batch: Batch) -> float:
        self.w_opt.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        value = check_finite(loss, "training loss", self.steps)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.weights)
        value = distributed.mean_scalar(value, loss.device)
        self.scaler.unscale_(self.w_opt)
        # Before clipping: clip_grad_norm_ would spread one NaN over every weight. Under fp16 an
        # overflow is expected now and then: the GradScaler skips that step and lowers its scale.
        if not self.scaler.is_enabled():
            check_finite_grads(self.weights, "training loss", self.steps)
        nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.scaler.step(self.w_opt)
        self.scaler.update()
        self.scheduler.step()
        return value

    def _one_level_step(self, batch: Batch, metrics: dict[str, float]) -> dict[str, float]:
        """Weights and (after the warm-up) architecture from the gradients of one training loss."""
        arch = self.steps >= self.warmup_steps
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        value = check_finite(loss, "training loss", self.steps)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.weights + (self.alphas if arch else []))
        value = distributed.mean_scalar(value, loss.device)
        self.scaler.unscale_(self.w_opt)
        if not self.scaler.is_enabled():
            check_finite_grads(self.weights, "training loss", self.steps)
        nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        if arch:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            for a in self.alphas:
                if a.grad is not None and scale != 1.0:
                    a.grad /= scale
            if scale == 1.0 or all(a.grad is None or bool(torch.isfinite(a.grad).all()) for a in self.alphas):
                if self.latency_weight > 0:
                    self._add_latency_grads(value)
                self._apply_arch_grads()
                metrics["arch_loss"] = value
            else:
                self.arch_skipped += 1
        for a in self.alphas:
            a.grad = None  # the weight optimizer never sees them
        self.scaler.step(self.w_opt)
        self.scaler.update()
        self.scheduler.step()
        self.steps += 1
        metrics.update(loss=value, lr=self.w_opt.param_groups[0]["lr"])
        return metrics

    def _arch_step(self, train_batch: Batch, val_batch: Batch) -> float:
        self.a_opt.zero_grad(set_to_none=True)
        if self.unrolled:
            value = self._unrolled_arch_grad(train_batch, val_batch)
        else:
            loss = self.loss(val_batch)
            value = check_finite(loss, "architecture (validation) loss", self.steps)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, self.alphas)
            distributed.average_tensors(grads)
            value = distributed.mean_scalar(value, loss.device)
            grads = [g / scale for g in grads] if scale != 1.0 else grads
            if scale != 1.0 and not all(bool(torch.isfinite(g).all()) for g in grads):
                self.arch_skipped += 1  # fp16 overflow: skip this architecture step (the weight step's
                return value            # GradScaler lowers the scale on its own overflow)
            for a, g in zip(self.alphas, grads):
                a.grad = g
        if self.latency_weight > 0:
            self._add_latency_grads(value)
        self._apply_arch_grads()
        return value

    # ---- latency-aware search ------------------------------------------------------------
    def expected_latency(self) -> torch.Tensor:
        """Milliseconds of every op on every edge, weighted by the softmax of the alphas over the ops
        other than `none` (which would otherwise win on latency alone and is never decoded)."""
        if self.latency is None:
            self.latency = self._latency_table()
        total = torch.zeros(())
        for kind, alpha in self.supernet.alphas.items():
            table = self.latency[kind].to(alpha.device)
            total = total + (torch.softmax(alpha[:, self.priced], dim=-1) * table[:, self.priced]).sum().cpu()
        return total

    def _latency_table(self) -> dict[str, torch.Tensor]:
        """Loaded from `latency_table` or measured now; either way written to the run directory."""
        from estimators.edge_latency import load_edge_latency, save_edge_latency
        if self.input_size is None:
            raise UserError("strategy.latency_weight needs the input size; run it through nas.search")
        about = self.space.edge_latency_about(self.input_size)
        if self.latency_table:
            shapes = {kind: tuple(a.shape) for kind, a in self.supernet.alphas.items()}
            table = load_edge_latency(self.latency_table, about, shapes)
            source = f"from {self.latency_table}"
        else:  # measured by rank 0 and sent to all: every rank must price the ops alike
            table = self.space.edge_latency(self.supernet, self.input_size) if distributed.is_main() else None
            table = distributed.broadcast_object(table)
            device = next(self.supernet.parameters()).device
            about = {**about, "device": str(device), "threads": torch.get_num_threads(),
                     "torch": torch.__version__}
            source = f"measured on {device}" + (" by rank 0" if distributed.world().enabled else "")
        if not all(float(t[:, self.priced].sum()) > 0 for t in table.values()):
            raise UserError(f"the op latency table ({source}) gives some cell type no positive time, so the "
                            "latency term is undefined; measure anew (strategy.latency_table=null) or set "
                            "strategy.latency_weight=0")
        if self.run_dir is not None and distributed.is_main():
            save_edge_latency(Path(self.run_dir) / "edge_latency.json", table, about)
        names = self.supernet.primitives
        per_op = torch.stack([t.mean(0) for t in table.values()]).mean(0)
        log.info("latency-aware search (weight %g), op latency %s, ms per edge (mean over edges): %s",
                 self.latency_weight, source,
                 ", ".join(f"{n} {float(v):.3f}" for n, v in zip(names, per_op) if n != "none"))
        return table

    def _add_latency_grads(self, loss: float) -> None:
        """The gradient of loss x (expected latency)^w (FBNet's and MnasNet's multiplicative form, in
        log space: d log L + w d log LAT, times L), added to the alphas' loss gradients: w is the
        share of loss one would trade for the same relative latency, whatever the loss's scale."""
        alphas = list(self.supernet.alphas.values())
        log_latency = torch.log(self.expected_latency())
        grads = torch.autograd.grad(log_latency, alphas)
        for a, g in zip(alphas, grads):
            a.grad = a.grad + self.latency_weight * loss * g.to(a.grad)
        self.last_latency = float(log_latency.detach().exp())

    def _apply_arch_grads(self) -> None:
        """The architecture optimizer's step, refused if a gradient is non-finite and undone if it
        leaves an architecture parameter non-finite (e.g. an overflow at a large learning rate)."""
        check_finite_grads(self.alphas, "architecture loss", self.steps)
        # small: one logit per op and edge, and the optimizer's moments of them
        before = [a.detach().clone() for a in self.alphas], copy.deepcopy(self.a_opt.state_dict())
        self.a_opt.step()
        try:
            check_finite_tensors(self.alphas, "an architecture parameter after its step", self.steps)
        except NonFiniteLossError:
            with torch.no_grad():
                for a, b in zip(self.alphas, before[0]):
                    a.copy_(b)
            self.a_opt.load_state_dict(before[1])
            raise

    # ---- second order -------------------------------------------------------------------
    def _virtual_step(self, batch: Batch, lr: float) -> None:
        """w <- w - lr * (grad + weight_decay * w + momentum * buffer), in place (SGD's own step)."""
        loss = self.loss(batch)
        check_finite(loss, "training loss of the virtual step", self.steps)
        grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        distributed.average_tensors(grads)
        check_finite_tensors(grads, "a weight gradient of the virtual step", self.steps)
        group = self.w_opt.param_groups[0]
        wd, momentum = group.get("weight_decay", 0.0), group.get("momentum", 0.0)
        with torch.no_grad():
            for w, g in zip(self.weights, grads):
                g = torch.zeros_like(w) if g is None else g
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                d = g + wd * w + (momentum * buf if buf is not None else 0.0)
                w.sub_(lr * d)

    def _unrolled_arch_grad(self, train_batch: Batch, val_batch: Batch) -> float:
        """Set each alpha's .grad to the second-order DARTS gradient. The weights are moved (virtual
        step, finite-difference probes) and always put back bit for bit from a copy, also when a
        non-finite loss or gradient stops the step half way."""
        lr = self.w_opt.param_groups[0]["lr"]
        backup = [w.detach().clone() for w in self.weights]
        try:
            value, d_alpha, d_w = self._grads_after_virtual_step(train_batch, val_batch, lr)
        finally:
            self._restore(backup)
        try:
            hvp = self._hessian_vector(train_batch, d_w)
        finally:
            self._restore(backup)
        for a, g, h in zip(self.alphas, d_alpha, hvp):
            a.grad = (torch.zeros_like(a) if g is None else g) - lr * h
        return value

    def _grads_after_virtual_step(self, train_batch: Batch, val_batch: Batch, lr: float):
        """(L_val, dL_val/d_alpha, dL_val/dw) at the virtually stepped weights w'."""
        self._virtual_step(train_batch, lr)
        loss = self.loss(val_batch)
        value = check_finite(loss, "architecture (validation) loss", self.steps)
        grads = torch.autograd.grad(loss, self.alphas + self.weights, allow_unused=True)
        distributed.average_tensors(grads)
        value = distributed.mean_scalar(value, loss.device)
        check_finite_tensors(grads, "a gradient of the architecture (validation) loss", self.steps)
        d_alpha = grads[: len(self.alphas)]
        d_w = [torch.zeros_like(w) if g is None else g
               for w, g in zip(self.weights, grads[len(self.alphas):])]
        return value, d_alpha, d_w

    def _restore(self, backup: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for w, b in zip(self.weights, backup):
                w.copy_(b)

    def _hessian_vector(self, batch: Batch, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        """(d/d_alpha d/dw L_train) . vector, by central differences with eps = fd_eps / ||vector||.

        Leaves the weights at w - eps * vector: the caller restores them from its copy (adding eps
        back, as the DARTS code does, would not give the same floats)."""
        eps = self.fd_eps / (torch.cat([v.flatten() for v in vector]).norm() + 1e-12)
        grads = []
        for sign in (1.0, -2.0):
            with torch.no_grad():
                for w, v in zip(self.weights, vector):
                    w.add_(sign * eps * v)
            loss = self.loss(batch)
            check_finite(loss, "training loss of the Hessian-vector product", self.steps)
            grads.append(torch.autograd.grad(loss, self.alphas, allow_unused=True))
            distributed.average_tensors(grads[-1])
            check_finite_tensors(grads[-1], "an architecture gradient of the Hessian-vector product",
                                 self.steps)
        return [(torch.zeros_like(a) if gp is None else gp - gm) / (2 * eps)
                for a, gp, gm in zip(self.alphas, *grads)]

    # ---- results and state ----------------------------------------------------------------
    def result(self) -> Genotype:
        return self.space.decode(self.supernet)

    def end_epoch(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        state = {"weight_optimizer": self.w_opt.state_dict(), "arch_optimizer": self.a_opt.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "steps": self.steps,
                 "latency": self.latency}  # a resumed search keeps the table it measured
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.w_opt.load_state_dict(state["weight_optimizer"])
        self.a_opt.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
        self.latency = state.get("latency")
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
