"""What nas.retrain does differently on video clips (data=synthetic_video, data=posetrack).

- A temporal genotype (search_space=temporal) trains on clips run online (`nas.engine.clips.temporal_loss`:
  each light frame fed the heatmaps its network propagated from the frame before); its key network comes from
  `key_checkpoint=` (a retrain of the key genotype, then frozen) or trains with the light networks.
- An image genotype trains on every frame of the clips, each on its own (`frames_loss`): the key network of a
  temporal genotype, or the reference networks ("key network on every frame", "light network alone").
- Either is evaluated ONLINE on the val videos (nas.pose.online.run_online): every track followed from its
  first ground-truth box, later crops from the previous prediction; PoseTrack OKS AP over the labelled frames.
  results.json adds the AP with ground-truth crops, for a temporal network both APs again with its light frames
  blind to the propagated heatmaps (`AP_no_fusion`, `AP_gt_boxes_no_fusion`: the same trained networks, fusion
  off), and the cost per frame: GFLOPs (mean over a cycle, and the cycle's sum) and the measured online step
  latency of each cycle position at batch 1 on one CPU thread, raw and drift-corrected (estimators/speed.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from estimators.complexity import count_gflops
from estimators.speed import busy_warning
from estimators.temporal_cost import KeyOnly, frame_gflops, frame_latency_ms, is_temporal
from nas.data.build_video import load_key
from nas.engine.clips import frames_loss, temporal_loss
from nas.engine.runtime import log
from nas.pose.online import ImageStepper, run_online

LATENCY_THREADS = 1  # the per-frame latency in results.json: batch 1, one CPU thread (as nas.profile's default)


def clip_length(data_cfg: DictConfig, genotype: Any) -> dict:
    """For a temporal genotype of cycle T, `data.clip_length` rounded up to whole cycles of 1 + T frames (every
    clip starts on a key frame and ends on a cycle's last light frame); nothing for image genotypes."""
    if genotype.space != "temporal" or "clip_length" not in data_cfg:
        return {}
    cycle = int(genotype.genotype["cycle"]) + 1
    length = max(1, math.ceil(int(data_cfg.clip_length) / cycle)) * cycle
    if length != data_cfg.clip_length:
        log.info("data.clip_length %d -> %d: whole cycles of 1 + %d frames", data_cfg.clip_length, length, cycle - 1)
    return {"clip_length": length}


def prepare(model: nn.Module, cfg: DictConfig, criterion: nn.Module, resuming: bool, genotype: Any) -> Callable:
    """The loss of a clip batch for `model`; a temporal model gets its key network from cfg.key_checkpoint
    (frozen) unless resuming (the checkpoint has it) — and is frozen again on resume."""
    if not is_temporal(model):
        if cfg.key_checkpoint:
            log.warning("key_checkpoint= is for temporal genotypes; ignored for an image network")
        return frames_loss(criterion)
    train_key = cfg.train_key if cfg.train_key is not None else not cfg.key_checkpoint
    if cfg.key_checkpoint and not resuming:
        from nas.genotype import Genotype
        load_key(model, cfg.key_checkpoint, Genotype.from_dict(genotype.genotype["key"]), freeze=not train_key)
    if not train_key:
        model.freeze_key()
    log.info("temporal network: key network %s; %d light frame(s) per cycle", "trained with the light networks"
             if train_key else f"frozen ({cfg.key_checkpoint or 'as built'})", model.cycle)
    return temporal_loss(criterion, train_key=train_key)


def online_evaluator(data: Any, device: torch.device, decode: str) -> Callable:
    """Trainer's `evaluate(net) -> (scores, predictions)`: the net run online over the val videos."""
    def evaluate(net: nn.Module) -> tuple[dict, list]:
        net.eval()
        result = run_online(_stepper(net), data.val_videos, data.input_size, decode=decode, sigma=data.sigma,
                            cycle=net.cycle + 1 if is_temporal(net) else None, device=device)
        return {**result.metrics, "mean_step_ms": result.mean_latency_ms}, result.results
    return evaluate


def video_results(model: nn.Module, data: Any, device: torch.device, decode: str) -> dict:
    """results.json's video part for the trained `model` (module doc)."""
    model.eval()
    gt = run_online(_stepper(model), data.val_videos, data.input_size, boxes="gt", decode=decode, sigma=data.sigma,
                    cycle=model.cycle + 1 if is_temporal(model) else None, device=device)
    size = tuple(data.input_size)
    blind = {}
    if is_temporal(model):  # the same trained networks with the light frames blind to the previous heatmaps
        model.fuse = False
        try:
            for boxes, name in (("online", "AP_no_fusion"), ("gt", "AP_gt_boxes_no_fusion")):
                blind[name] = run_online(model, data.val_videos, data.input_size, boxes=boxes, decode=decode,
                                         sigma=data.sigma, cycle=model.cycle + 1, device=device).metrics["AP"]
        finally:
            model.fuse = True
    if is_temporal(model):
        per_frame = frame_gflops(model, size)
        latency = frame_latency_ms(model, size, cycles=20, threads=LATENCY_THREADS, drift_correction=True)
        positions = ["key"] + [f"light{i}" for i in range(model.cycle)]
        frames = {"GFLOPs_per_position": dict(zip(positions, per_frame)),
                  "latency_ms_per_position": dict(zip(positions, latency["per_position"])),
                  "latency_ms_per_frame": latency["mean_per_frame"], "GFLOPs": sum(per_frame) / len(per_frame),
                  "cycle_GFLOPs": sum(per_frame)}
    else:
        latency = frame_latency_ms(KeyOnly(model), size, cycles=20, threads=LATENCY_THREADS, drift_correction=True)
        frames = {"latency_ms_per_frame": latency["mean_per_frame"], "GFLOPs": count_gflops(model, size)}
    # the same at the machine's calibrated speed (estimators/speed.py): what the search's constraint compares
    frames["latency_ms_per_frame_corrected"] = latency["corrected_per_frame"]
    frames["latency_calibration"] = {k: v for k, v in latency["probe"].items() if k != "median_now_ms"}
    frames["latency_preemptions_per_pass"] = latency["preemptions_per_pass"]
    warning = busy_warning(latency["preemptions_per_pass"])
    if warning:
        log.warning("per-frame latency: %s", warning)
    model.to(device)
    return {"AP_gt_boxes": gt.metrics["AP"], **blind, **frames, "latency_threads": LATENCY_THREADS,
            "boxes": "AP: crops from the previous frame's prediction (online); AP_gt_boxes: ground-truth crops",
            "val_videos": len(data.val_videos)}


def _stepper(net: nn.Module) -> Any:
    return net if is_temporal(net) else ImageStepper(net)
