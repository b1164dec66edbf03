"""The accuracy that ranks video networks in a search: OKS AP of a network run ONLINE over held-out videos.

What `HeldOutPoseAccuracy` (estimators/accuracy.py) is for image networks, for the temporal space: the
candidate (a path of the temporal supernet, or any `reset()` / `step()` network) follows every track of a few
held-out *training* videos frame by frame (nas.pose.online.run_online: crops from the previous prediction,
PoseTrack OKS AP over every labelled frame of the videos, key and light frames alike). `calibrate=True`
first re-estimates the BatchNorm statistics of the path on a fixed, seeded set of un-augmented training clips
run as clips (key frame, then light frames fed the propagated heatmaps), as one-shot searches recalibrate.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch import nn

from nas.data.posetrack import Video
from nas.data.video_clips import ClipDataset
from nas.pose.online import ImageStepper, run_online


@torch.no_grad()
def recalibrate_bn_clips(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> None:
    """Every BatchNorm's running statistics replaced by their plain average over the clip `batches` (the
    model in training mode, momentum None: a cumulative average), as torch's `update_bn` does for images."""
    was_training = model.training
    model.train()  # a frozen key network stays in eval mode (TemporalPoseNet.train): its statistics are kept
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.training]
    if not batches or not norms:
        model.train(was_training)
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    for batch in batches:
        model(batch["images"], batch["affines"])
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


class HeldOutOnlineAccuracy:
    """`accuracy(model, genotype=None, calibrate=False) -> {"AP", "AP50", ..., "latency_ms_online"}` on
    `videos` (module doc). `calibration`: training clips (augmentation is switched off for them)."""

    def __init__(self, videos: Sequence[Video], calibration: ClipDataset, device: torch.device | str,
                 sigma: float, input_size: Sequence[int], seed: int = 0, calib_clips: int = 32,
                 batch_size: int = 8, min_score: float = 0.05):
        self.videos, self.device, self.sigma = list(videos), torch.device(device), float(sigma)
        self.input_size, self.min_score = tuple(int(v) for v in input_size), float(min_score)
        self._calibration = calibration.restricted(calibration.videos, train=False)
        self._calib_clips, self._batch, self._seed = calib_clips, batch_size, seed
        self._batches: list[dict[str, torch.Tensor]] | None = None

    @property
    def num_instances(self) -> int:
        return sum(len(f.people) for v in self.videos for f in v.frames if f.is_labeled)

    @property
    def num_frames(self) -> int:
        return sum(len(v.frames) for v in self.videos)

    def calibration_batches(self) -> list[dict[str, torch.Tensor]]:
        """Un-augmented clips (images, affines) of a seeded subset of the calibration clips, made once."""
        if self._batches is None:
            n = len(self._calibration)
            picks = sorted(random.Random(self._seed).sample(range(n), min(n, self._calib_clips)))
            items = [self._calibration[i] for i in picks]
            self._batches = [{key: torch.stack([it[key] for it in items[i:i + self._batch]]).to(self.device)
                              for key in ("images", "affines")} for i in range(0, len(items), self._batch)]
        return self._batches

    def __call__(self, model: nn.Module, genotype: Any = None, calibrate: bool = False) -> dict[str, float]:
        if calibrate:
            recalibrate_bn_clips(model, self.calibration_batches())
        was_training = model.training
        model.eval()
        stepper = model if hasattr(model, "step") else ImageStepper(model)
        cycle = getattr(model, "cycle", None)
        result = run_online(stepper, self.videos, self.input_size, sigma=self.sigma, min_score=self.min_score,
                            cycle=cycle + 1 if cycle else None, device=self.device)
        model.train(was_training)
        return {**{k: float(v) for k, v in result.metrics.items()}, "latency_ms_online": result.mean_latency_ms}
