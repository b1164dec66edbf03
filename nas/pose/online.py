"""Online pose estimation over videos, as a deployed top-down system runs it, and its PoseTrack evaluation.

Each annotated person (track) of a video is followed from its first annotated frame to its last one, frame
by frame in time order: the first frame's crop comes from its ground-truth box (what a detector would give
when the person appears); each later frame's crop comes from the previous frame's prediction
(`box_from_keypoints`, `boxes="online"`), or from that frame's ground-truth box where it has one
(`boxes="gt"`, the upper bound of box quality; a frame without one takes the box from the previous
prediction). The model is a
*stepper*: `reset()` at the start of a track, then `step(image, affine)` per frame with the (1, 3, H, W) crop
and its (1, 2, 3) image -> input affine, returning (1, K, h, w) heatmaps. An image network steps each frame
on its own (`ImageStepper`); a temporal network carries the previous frame's heatmaps (`TemporalPoseNet.step`).
Predictions on labelled frames are scored with `evaluate_posetrack` (COCO OKS AP with PoseTrack's joints), and
each step is timed, per position in the network's cycle, so a video network's mean latency per frame can be
read next to its AP.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from nas.data.posetrack import Video, evaluate_posetrack
from nas.data.topdown import read_rgb
from nas.data.transforms import box_to_center_scale
from nas.data.video_clips import box_from_keypoints, crop_image
from nas.pose.decode import decode_heatmaps
from nas.pose.predict import results_from_predictions

BOX_SOURCES = ("online", "gt")


class Stepper(Protocol):
    def reset(self) -> None: ...

    def step(self, image: torch.Tensor, affine: torch.Tensor) -> torch.Tensor: ...


class ImageStepper:
    """An image network run on every frame alone (the "key network on every frame" baseline)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net

    def reset(self) -> None:
        pass

    def step(self, image: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
        out = self.net(image)
        return out[-1] if isinstance(out, (list, tuple)) else out


@dataclass
class OnlineResult:
    metrics: dict[str, float]
    results: list[dict]
    frames: int                      # steps run
    latency_ms: dict[int, float] = field(default_factory=dict)  # mean step time per position in the cycle
    mean_latency_ms: float = 0.0     # over every step run


def track_spans(video: Video) -> dict[int, tuple[int, int]]:
    """track_id -> (index of its first, index of its last annotated frame) in `video.frames`."""
    spans: dict[int, tuple[int, int]] = {}
    for i, frame in enumerate(video.frames):
        for person in frame.people:
            if person.track_id < 0 or person.bbox[2] <= 0 or person.bbox[3] <= 0:
                continue
            first, _ = spans.get(person.track_id, (i, i))
            spans[person.track_id] = (first, i)
    return spans


def person_in(frame: Any, track_id: int) -> Any:
    """The person of `track_id` in `frame`, or None."""
    return next((p for p in frame.people if p.track_id == track_id), None)


@torch.no_grad()
def run_online(stepper: Stepper, videos: Sequence[Video], input_size: Sequence[int],
               boxes: str = "online", decode: str = "quarter",
               sigma: float = 2.0, min_score: float = 0.05, padding: float = 1.25, expand: float | None = None,
               cycle: int | None = None,
               device: torch.device | str = "cpu") -> OnlineResult:
    """Follow every track of `videos` online with `stepper` and score the labelled frames (module doc).

    `min_score`: joints below it do not shape the next crop. 0.05 rather than the 0.2 of COCO's rescoring:
    with crops from the previous prediction, the key and light networks of nas.tools.temporal_gain scored AP
    0.266 / 0.215 at 0.05 against 0.213 / 0.182 at 0.2 on the built-in val videos (0.35: 0.188 for the key),
    as low-confidence joints still place the person. `padding`: around ground-truth boxes (as in training);
    `expand`: around the box of predicted joints
    (default `padding`); `cycle`: the network's frames per cycle (1 + T for a temporal network), for the
    per-position latency."""
    if boxes not in BOX_SOURCES:
        raise ValueError(f"boxes must be one of {', '.join(BOX_SOURCES)}, got {boxes!r}")
    height, width = int(input_size[0]), int(input_size[1])
    aspect = width / height
    results: list[dict] = []
    times: dict[int, list[float]] = {}
    steps = 0
    for video in videos:
        images: dict[int, np.ndarray] = {}
        for track, (first, last) in sorted(track_spans(video).items()):
            stepper.reset()
            center = scale = None
            for t, frame in enumerate(video.frames[first:last + 1]):
                person = person_in(frame, track)
                if t == 0 or (boxes == "gt" and person is not None):
                    center, scale = box_to_center_scale(person.bbox, aspect, padding)
                else:
                    center, scale = online
                if frame.image_id not in images:
                    images[frame.image_id] = read_rgb(frame.file_path)
                crop, affine = crop_image(images[frame.image_id], center, scale, (height, width))
                start = time.perf_counter()
                heat = stepper.step(crop.unsqueeze(0).to(device), torch.from_numpy(affine).unsqueeze(0).to(device))
                times.setdefault(t % cycle if cycle else 0, []).append((time.perf_counter() - start) * 1e3)
                steps += 1
                preds, maxvals = decode_heatmaps(heat.float().cpu().numpy(), np.asarray([center]),
                                                 np.asarray([scale]), method=decode, sigma=sigma)
                if frame.is_labeled:
                    entry = results_from_predictions(preds, maxvals, {"image_id": [frame.image_id],
                                                                      "scale": np.asarray([scale])})[0]
                    entry["track_id"] = int(track)
                    results.append(entry)
                online = box_from_keypoints(preds[0], maxvals[0, :, 0], min_score, aspect, expand=expand or padding,
                                            previous=(center, scale))
        images.clear()
    metrics = evaluate_posetrack(list(videos), results) if results else {"AP": 0.0}
    every = [x for v in times.values() for x in v]
    return OnlineResult(metrics=metrics, results=results, frames=steps,
                        latency_ms={k: float(np.mean(v)) for k, v in sorted(times.items())},
                        mean_latency_ms=float(np.mean(every)) if every else 0.0)
