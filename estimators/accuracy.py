"""Pose accuracy of a candidate network on held-out training images, for strategies that score
many candidates (random search, evolution) without touching the validation split.

The images are a fixed, seeded subset of the images the search held out from weight training,
cropped without augmentation, so every candidate is scored on exactly the same inputs. For
sub-networks that run from a weight-sharing supernet, BatchNorm statistics are first re-estimated
on a fixed set of un-augmented crops of weight-training images (the supernet's running statistics
mix every path it was trained on; SPOS and ViPNAS recalibrate the same way).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import Dataset, Subset

from nas.engine.runtime import make_loader
from nas.errors import UserError
from nas.pose.loss import KeypointMSELoss, final_heatmaps
from nas.pose.predict import predict_coco

_LOSS = KeypointMSELoss(use_target_weight=True)  # the search's default criterion (conf/search.yaml)


def _eval_view(dataset: Dataset) -> tuple[Any, list[int]]:
    """(the un-augmented base dataset, the instance indices) of a training dataset or Subset of one."""
    base, indices = dataset, list(range(len(dataset)))
    if isinstance(dataset, Subset):
        base, indices = dataset.dataset, list(dataset.indices)
    view = copy.copy(base)
    view.train = False  # plain crops: no flip, scale, rotation or half-body
    return view, indices


def _pick_images(view: Any, indices: Sequence[int], max_images: int | None,
                 seed: int) -> tuple[list[int], list[int]]:
    """(image ids, their instance indices): a seeded choice of at most `max_images` images."""
    by_image: dict[int, list[int]] = {}
    for i in indices:
        by_image.setdefault(int(view.samples[i].image_id), []).append(i)
    ids = sorted(by_image)
    if max_images is not None and max_images < len(ids):
        ids = sorted(np.random.default_rng(seed).permutation(ids)[:max_images].tolist())
    return ids, [i for image_id in ids for i in by_image[image_id]]


def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Replace every BatchNorm's running statistics by their plain average over `batches`.

    torch's `update_bn` does exactly this (statistics reset, cumulative average with momentum None,
    mode and momenta restored); the guard keeps the statistics when there is nothing to average,
    where `update_bn` would leave them reset to mean 0 and variance 1.
    """
    if batches:
        update_bn(batches, model)


class HeldOutPoseAccuracy:
    """OKS AP (COCO-style data) of a network on a fixed subset of held-out training images.

    Estimator contract: `accuracy(model, genotype) -> {"AP": ..., "AP50": ..., ...}`.
    `calibrate=True` re-estimates BatchNorm statistics first (for weight-sharing sub-networks).
    """

    def __init__(self, held_out: Dataset, device: torch.device, flip_pairs: Sequence[tuple[int, int]],
                 max_images: int | None = 100, seed: int = 0, batch_size: int = 32,
                 calibration: Dataset | None = None, calib_images: int = 160, flip: bool = False):
        view, indices = _eval_view(held_out)
        if "image_ids" not in inspect.signature(view.evaluate).parameters:
            raise UserError(f"{type(view).__name__} cannot be scored on a subset of its training images "
                            "yet; search on COCO-format data (data=synthetic or data=coco)")
        self.dataset, self.device, self.flip_pairs, self.flip = view, device, flip_pairs, flip
        self.image_ids, chosen = _pick_images(view, indices, max_images, seed)
        self.loader = make_loader(Subset(view, chosen), batch_size, False, 0)
        self.sigma = view.sigma
        self._calibration, self._calib_images, self._seed = calibration, calib_images, seed
        self._calib_batches: list[torch.Tensor] | None = None

    @property
    def num_instances(self) -> int:
        return len(self.loader.dataset)

    def calibration_batches(self) -> list[torch.Tensor]:
        """Un-augmented crops of a seeded subset of `calibration` images, made once and kept."""
        if self._calib_batches is None:
            if self._calibration is None:
                raise ValueError("BatchNorm recalibration needs a calibration dataset")
            view, indices = _eval_view(self._calibration)
            _, chosen = _pick_images(view, indices, None, self._seed)
            chosen = sorted(np.random.default_rng(self._seed).permutation(chosen)[: self._calib_images].tolist())
            loader = make_loader(Subset(view, chosen), self.loader.batch_size, False, 0)
            self._calib_batches = [batch["image"].to(self.device) for batch in loader]
        return self._calib_batches

    def __call__(self, model: nn.Module, genotype: object = None, calibrate: bool = False) -> dict[str, float]:
        if calibrate:
            recalibrate_bn(model, self.calibration_batches())
        results = predict_coco(model, self.loader, self.device, self.flip_pairs, flip=self.flip,
                               sigma=self.sigma)
        scores = self.dataset.evaluate(results, image_ids=self.image_ids)
        return {**scores, "neg_heatmap_loss": -self.heatmap_loss(model)}

    def heatmap_loss(self, model: nn.Module) -> float:
        """The training loss (target-weighted heatmap MSE) on the same held-out crops, per instance.

        A continuous score beside AP: near the start of training every candidate's AP is close to 0
        and moves in steps of whole matched people, while the loss still orders candidates. Returned
        negated by `__call__` (`neg_heatmap_loss`, higher is better) so any strategy can rank by it."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.loader:
                out = final_heatmaps(model(batch["image"].to(self.device)))
                per_sample = _LOSS(out.float(), batch["target"].to(self.device), batch["target_weight"].to(self.device))
                total += float(per_sample) * len(out)
                count += len(out)
        model.train(was_training)
        return total / max(1, count)
