"""Random search, the baseline NAS papers are judged against (Li & Talwalkar 2019; Yu et al. 2020).

Two variants, one class:
- plain (`weight_sharing=False`): sample `num_samples` genotypes, train each one's standalone
  network (at the search width) from scratch for the same number of steps on the same data, score
  each with the same held-out accuracy estimator, keep the best;
- weight sharing (`weight_sharing=True`): train the space's supernet on a uniformly sampled path at
  every step (single-path one-shot), then rank `num_samples` sampled genotypes by the accuracy of
  their path in the shared weights (BatchNorm recalibrated per path), and keep the best.

Under torch.distributed every rank samples the same paths and candidates (the same seeded generators),
trains on its share of each batch with gradients averaged over ranks, and the shared-weight ranking
splits the candidates between the ranks. Both fit the search loop's step/epoch contract, so they
checkpoint and resume like DARTS: the candidate list, the scores so far, the network in training and
its optimizer are in `state_dict`.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import torch
from torch import nn

from nas.engine import distributed
from nas.engine.checkpoint import generator_state, set_generator_state
from nas.engine.precision import autocast, grad_scaler
from nas.engine.guards import check_finite, check_finite_grads
from nas.engine.runtime import log, to_memory_format
from nas.errors import UserError
from nas.genotype import Genotype
from nas.pose.loss import supervised_loss

Batch = dict[str, torch.Tensor]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


class RandomSearch:
    def __init__(self, space: Any, supernet: nn.Module, criterion: nn.Module, optimizer: OptimizerFactory,
                 epochs: int, steps_per_epoch: int, accuracy: Callable[..., dict[str, float]],
                 num_samples: int = 6, weight_sharing: bool = False, steps_per_candidate: int = 200,
                 supernet_steps: int | None = None, grad_clip: float = 5.0, seed: int = 0,
                 metric: str = "AP", amp: str | None = None):
        """Plain: one epoch per candidate, `steps_per_candidate` steps each (the run's `epochs` does
        not apply). Weight sharing: `supernet_steps` path steps spread over the run's epochs (None:
        epochs x steps_per_epoch), then the ranking."""
        if weight_sharing and not hasattr(supernet, "set_path"):
            raise UserError(f"search space {space.name!r} has no weight-sharing supernet (set_path), so "
                            "strategy=random_weight_sharing cannot search it; use strategy=random")
        if min(num_samples, steps_per_candidate, supernet_steps or 1) < 1:
            raise UserError("strategy.num_samples, steps_per_candidate and supernet_steps must be >= 1")
        self.space, self.supernet, self.criterion, self.accuracy = space, supernet, criterion, accuracy
        self.make_optimizer, self.grad_clip, self.metric = optimizer, grad_clip, metric
        self.amp, self.device = amp, next(supernet.parameters()).device
        self.scaler = grad_scaler(amp, self.device)
        if weight_sharing:
            steps_per_epoch = -(-supernet_steps // epochs) if supernet_steps else steps_per_epoch
            self.epochs, self.steps_per_epoch, self.budget = epochs, steps_per_epoch, 0
        else:
            self.epochs, self.steps_per_epoch = num_samples, steps_per_candidate
            self.budget = steps_per_candidate
        self.weight_sharing, self.total_steps = weight_sharing, self.epochs * self.steps_per_epoch
        sampler = random.Random(seed)
        self.candidates = [space.sample(sampler).to_dict() for _ in range(num_samples)]
        self.path_rng = random.Random(seed + 1)  # the paths trained in weight sharing
        self.scores: list[dict[str, float]] = []
        self.steps, self.done_steps = 0, 0
        self.net: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        if weight_sharing:
            self.net, self.opt = supernet, optimizer(_weights(supernet))
        log.info("random search: %d candidates, %s", num_samples,
                 f"{self.total_steps} single-path supernet steps, then ranking in the shared weights"
                 if weight_sharing else f"each trained {self.budget} steps from scratch, one epoch each")

    def schedule(self) -> tuple[int, int]:
        """(epochs, steps per epoch) this strategy runs; the search loop follows it."""
        return self.epochs, self.steps_per_epoch

    # ---- training ------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        if self.weight_sharing:
            self.supernet.set_path(self.space.sample(self.path_rng))
            loss = self._train_step(self.supernet, train_batch)
        else:
            if self.net is None:
                self._start_candidate()
            loss = self._train_step(self.net, train_batch)
            self.done_steps += 1
            if self.done_steps == self.budget:
                self._score_current()
        self.steps += 1
        return {"loss": loss}

    def _train_step(self, net: nn.Module, batch: Batch) -> float:
        net.train()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.amp, self.device):
            heatmaps = net(batch["image"])
        loss = supervised_loss(self.criterion, heatmaps, batch, bool(self.amp))
        value = check_finite(loss, "training loss", self.steps)
        self.scaler.scale(loss).backward()
        stepped = [p for group in self.opt.param_groups for p in group["params"]]
        distributed.average_gradients(stepped)  # every rank samples the same path (path_rng)
        value = distributed.mean_scalar(value, loss.device)
        self.scaler.unscale_(self.opt)
        if not self.scaler.is_enabled():  # fp16: the GradScaler skips an overflowed step instead
            check_finite_grads(stepped, "network weights", self.steps)  # before clipping spreads a NaN
        nn.utils.clip_grad_norm_(stepped, self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return value

    def _start_candidate(self) -> None:
        device = next(self.supernet.parameters()).device
        net = self.space.build(Genotype.from_dict(self.candidates[len(self.scores)])).to(device)
        self.net = to_memory_format(net, _channels_last(self.supernet))  # the layout the run asked for
        self.opt = self.make_optimizer(self.net.parameters())
        self.done_steps = 0

    def _score_current(self) -> None:
        # one score for all ranks: rank 0's BatchNorm statistics, scored once, sent to all
        distributed.broadcast_module(self.net)
        score = distributed.broadcast_object(self.accuracy(self.net) if distributed.is_main() else None)
        self.scores.append(score)
        log.info("candidate %d/%d: %s %.4f after %d steps", len(self.scores), len(self.candidates),
                 self.metric, score[self.metric], self.budget)
        self.net, self.opt = None, None

    def _rank_in_shared_weights(self) -> None:
        """Score the remaining candidates (BatchNorm recalibrated per path): each rank scores its share
        of them, and the scores are gathered in candidate order."""
        todo = list(range(len(self.scores), len(self.candidates)))
        mine = {}
        for i in distributed.shard(todo):
            self.supernet.set_path(Genotype.from_dict(self.candidates[i]))
            mine[i] = self.accuracy(self.supernet, calibrate=True)
            log.info("candidate %d/%d in the shared weights: %s %.4f", i + 1, len(self.candidates),
                     self.metric, mine[i][self.metric])
        self.supernet.set_path(None)
        scored = {i: score for part in distributed.all_gather_objects(mine) for i, score in part.items()}
        self.scores += [scored[i] for i in todo]

    # ---- results and state ------------------------------------------------------------------
    def end_epoch(self) -> dict[str, Any]:
        if self.weight_sharing and self.steps >= self.total_steps:
            self._rank_in_shared_weights()
        if not self.scores:
            return {"candidates_scored": 0}
        return {"candidates_scored": len(self.scores), f"best_{self.metric}": self._best()[1]}

    def _best(self) -> tuple[int, float]:
        values = [s[self.metric] for s in self.scores]
        best = max(range(len(values)), key=lambda i: values[i])  # the first of equals
        return best, values[best]

    def result(self) -> Genotype:
        index = self._best()[0] if self.scores else 0
        genotype = Genotype.from_dict(self.candidates[index])
        if self.scores:
            genotype.provenance = {"search_score": {self.metric: self.scores[index][self.metric]},
                                   "candidates": [{"genotype": c["genotype"], **s}
                                                  for c, s in zip(self.candidates, self.scores)]}
        return genotype

    def state_dict(self) -> dict:
        state = {"candidates": self.candidates, "scores": self.scores, "steps": self.steps,
                 "done_steps": self.done_steps, "path_rng": generator_state(self.path_rng)}
        if self.net is not None and not self.weight_sharing:
            state["net"] = self.net.state_dict()
        if self.opt is not None:
            state["optimizer"] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.candidates, self.scores = list(state["candidates"]), list(state["scores"])
        self.steps, self.done_steps = state["steps"], state["done_steps"]
        set_generator_state(self.path_rng, state["path_rng"])
        if "net" in state:
            self._start_candidate()
            self.net.load_state_dict(state["net"])
            self.done_steps = state["done_steps"]
        if "optimizer" in state:
            self.opt.load_state_dict(state["optimizer"])


def _weights(net: nn.Module) -> list[nn.Parameter]:
    return list(net.weight_parameters()) if hasattr(net, "weight_parameters") else list(net.parameters())


def _channels_last(net: nn.Module) -> bool:
    """Whether `net`'s first convolution weight is in NHWC (the run's `channels_last`)."""
    weight = next((p for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
