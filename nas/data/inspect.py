"""The dataset inspector behind `python -m nas.data`: what the pipeline makes of a dataset, without a model.

It builds only the chosen split(s) (`split=null`: every split whose annotations exist, naming the missing
ones), so a download holding only the val annotations can be inspected. For each split it loads every
sample through the dataset's own `__getitem__` with a DataLoader and reports:
- counts: images, instances kept, instances dropped at load time by reason (`dataset.dropped`), and
  image files that could not be read (each failing sample is caught and skipped, not fatal);
- the round-trip score: the target heatmaps the pipeline made from the ground truth, decoded back to
  image coordinates (quarter offset, DARK, beta-soft-argmax) and scored with the dataset's own metric. A perfect
  encoder/decoder pair scores AP 1.0 / PCKh 100; what is lost here is lost by every model trained on it;
- loading throughput; and a few PNGs of crops with the targets and the skeleton drawn on them.
A split of clips (data=posetrack, a ClipDataset) reports videos, frames, labelled frames, tracks, instances
and clips instead, scores the round trip of its clips' frames on the people those clips hold, and draws each
PNG as a clip's frames side by side (`inspect_clip_split`).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from nas.data.build import build_splits
from nas.data.topdown import IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError
from nas.data.posetrack import evaluate_posetrack
from nas.data.video_clips import ClipDataset, covered_videos, unique_results, video_counts
from nas.data.keypoints import COCO_SKELETON, NUM_COCO_KEYPOINTS
from nas.engine.runtime import configure_threads
from nas.errors import UserError
from nas.metrics.coco_eval import evaluate_keypoints
from nas.pose.decode import decode_heatmaps, get_max_preds, refine_dark
from nas.pose.predict import results_from_predictions
from nas.utils.io import atomic_write_text

SPLITS = {"val": ("val",), "train": ("train",), "both": ("train", "val")}
MAX_LISTED = 10  # unreadable image paths named in the summary


class _Guarded(Dataset):
    """`dataset[indices[i]]`, or {"error": path} when its image cannot be read (picklable for workers)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        try:
            return self.dataset[index]
        except (UnreadableImageError, OSError) as err:
            path = getattr(err, "path", None)  # a clip dataset names the failing frame on the error
            if path is None:
                path = getattr(self.dataset.samples[index], "image_path", None)
            return {"error": str(path) if path is not None else str(err), "index": index,
                    "message": str(err)}


def _collate(items: list[dict]) -> dict:
    good = [item for item in items if "error" not in item]
    return {"batch": default_collate(good) if good else None,
            "errors": [item for item in items if "error" in item]}


def _primary_metric(dataset: Any) -> str:
    name = getattr(dataset, "primary_metric", None)
    if name:
        return str(name)
    return "AP" if hasattr(dataset, "coco") else "PCKh"


def _evaluate(dataset: Any, results: list[dict]) -> dict[str, float]:
    """The dataset's own metric of COCO-format results (each with its sample `index`)."""
    if not results:
        return {}
    if hasattr(dataset, "evaluate"):
        return {k: v for k, v in dataset.evaluate(results).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if hasattr(dataset, "coco"):
        return evaluate_keypoints(dataset.coco, results)
    return _pckh_fallback(dataset, results)


def _pckh_fallback(dataset: Any, results: list[dict]) -> dict[str, float]:
    """PCKh of results on an MPII-style dataset (json annotations under root/annot/<split>.json)."""
    from nas.data.mpii import load_mpii_gt
    from nas.metrics.pckh import pckh_table
    ann_file = Path(dataset.ann_file)
    gt = load_mpii_gt(ann_file.parent.parent, ann_file.stem, getattr(dataset, "one_based", True))
    rows = np.array([int(r["index"]) for r in results])
    preds = np.array([r["keypoints"] for r in results], np.float64).reshape(len(results), -1, 3)[..., :2]
    table = pckh_table(preds, gt.joints[rows], gt.visible[rows], gt.head_sizes[rows])
    table["PCKh"] = table["Mean"]
    return table


def _heatmap_to_input(coords: np.ndarray, input_size: tuple[int, int],
                      heatmap_size: tuple[int, int]) -> np.ndarray:
    """Heatmap-pixel [x, y] -> input-pixel coordinates (pixel-centre convention, as nas.data.transforms)."""
    ratio = np.array([input_size[1] / heatmap_size[1], input_size[0] / heatmap_size[0]])
    return (coords + 0.5) * ratio - 0.5


def draw_sample(image: torch.Tensor, target: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, 3) uint8 BGR picture: the un-normalised crop, the targets' max overlaid, the skeleton."""
    crop = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    crop = np.clip(crop * 255.0, 0, 255).astype(np.uint8)
    height, width = crop.shape[:2]
    heat = np.clip(target.max(axis=0), 0.0, 1.0)
    heat = cv2.resize((heat * 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    picture = cv2.addWeighted(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), 0.6, heat, 0.4, 0.0)
    coords = refine_dark(target[None], get_max_preds(target[None])[0], sigma)[0]
    points = _heatmap_to_input(coords, (height, width), target.shape[1:])
    visible = weight.reshape(-1) > 0
    if len(points) == NUM_COCO_KEYPOINTS:  # COCO's limbs (1-based); other sets: points only
        for a, b in COCO_SKELETON:
            if visible[a - 1] and visible[b - 1]:
                cv2.line(picture, tuple(int(round(v)) for v in points[a - 1]),
                         tuple(int(round(v)) for v in points[b - 1]), (0, 255, 0), 1, cv2.LINE_AA)
    for point, seen in zip(points, visible):
        if seen:
            cv2.circle(picture, tuple(int(round(v)) for v in point), 2, (0, 0, 255), -1, cv2.LINE_AA)
    return picture


def inspect_split(dataset: Any, name: str, out_dir: Path, batch_size: int, num_workers: int,
                  max_samples: int | None, num_images: int, round_trip: bool) -> dict[str, Any]:
    """Load every sample of `dataset` once; counts, round-trip scores, throughput, PNGs (module doc)."""
    total = len(dataset)
    count = total if max_samples is None else min(total, int(max_samples))
    if count == 0:
        raise UserError(f"the {name} split holds no instances after filtering; check data.root "
                        "and the annotations")
    loader = DataLoader(_Guarded(dataset, range(count)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, persistent_workers=False)
    sigma = float(getattr(dataset, "sigma", 2.0))
    results: dict[str, list[dict]] = {"quarter": [], "dark": [], "soft_argmax": []}
    errors = {method: 0.0 for method in results}  # summed image-pixel error of the decoded joints
    unreadable: dict[str, str] = {}
    failed_instances, loaded, saved, decode_s = 0, 0, 0, 0.0
    image_ids: set[int] = set()
    visible_joints = 0
    start = time.perf_counter()
    for item in loader:
        for error in item["errors"]:
            failed_instances += 1
            unreadable.setdefault(error["error"], error["message"])
        batch = item["batch"]
        if batch is None:
            continue
        meta = batch["meta"]
        # a train-mode dataset may replace an unreadable sample by the next one (nas.data.bad_images)
        for skipped in meta.get("skipped", []):
            paths = [path for path in str(skipped).split("\n") if path]
            failed_instances += bool(paths)  # this sample's image was unreadable (later ones may repeat it)
            for path in paths:
                unreadable.setdefault(path, "skipped by the dataset")
        loaded += len(batch["target"])
        image_ids.update(int(i) for i in meta["image_id"])
        targets = batch["target"].numpy()
        weights = batch["target_weight"].numpy()
        visible_joints += int((weights > 0).sum())
        for j in range(min(len(targets), num_images - saved)):
            picture = draw_sample(batch["image"][j], targets[j], weights[j], sigma)
            cv2.imwrite(str(out_dir / f"{name}_{saved:02d}_sample{int(meta['index'][j])}.png"), picture)
            saved += 1
        if round_trip:
            t0 = time.perf_counter()
            centers, scales = meta["center"].numpy(), meta["scale"].numpy()
            for method in results:
                preds, maxvals = decode_heatmaps(targets, centers, scales, method=method, sigma=sigma)
                gt = np.stack([dataset.samples[int(i)].keypoints[:, :2] for i in meta["index"]])
                seen = weights[..., 0] > 0  # (B, K): joints that got a target
                errors[method] += float(np.linalg.norm(preds - gt, axis=2)[seen].sum())
                entries = results_from_predictions(preds, maxvals, meta)
                for entry, index in zip(entries, meta["index"].tolist()):
                    entry["index"] = int(index)
                results[method] += entries
            decode_s += time.perf_counter() - t0
    wall = time.perf_counter() - start
    load_s = max(wall - decode_s, 1e-9)
    metric = _primary_metric(dataset)
    scores: dict[str, dict[str, float]] = {}
    if round_trip:
        for method, entries in results.items():
            scores[method] = _evaluate(dataset, entries)
    coco = getattr(dataset, "coco", None)
    return {
        "split": name,
        "images_in_annotations": len(coco.getImgIds()) if coco is not None else None,
        "images_loaded": len(image_ids),
        "instances_kept": total,
        "instances_inspected": count,
        "instances_loaded": loaded,
        "dropped": dict(getattr(dataset, "dropped", {}) or {}),
        "visible_joints": visible_joints,
        "unreadable_images": len(unreadable),
        "unreadable_instances": failed_instances,
        "unreadable_paths": sorted(unreadable)[:MAX_LISTED],
        "primary_metric": metric,
        "round_trip": {method: s.get(metric, s.get("Mean")) for method, s in scores.items()}
        if round_trip else None,
        "round_trip_metrics": scores if round_trip else None,
        "round_trip_error_px": {method: e / max(visible_joints, 1) for method, e in errors.items()}
        if round_trip else None,
        "round_trip_note": None if round_trip else "augmented split: targets are of transformed crops",
        "sigma": sigma,
        "wall_s": round(wall, 3),
        "load_s": round(load_s, 3),
        "samples_per_s": round((loaded + failed_instances) / load_s, 1),
        "images_written": saved,
        "capped": count < total,
    }


def draw_clip(images: torch.Tensor, targets: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """The L frames of a clip side by side (each as `draw_sample` draws a crop), split by white bars."""
    pictures = [draw_sample(image, target, weight, sigma) for image, target, weight in zip(images, targets, weights)]
    bar = np.full((pictures[0].shape[0], 2, 3), 255, dtype=np.uint8)
    return np.concatenate([part for picture in pictures for part in (picture, bar)][:-1], axis=1)


def inspect_clip_split(dataset: ClipDataset, name: str, out_dir: Path, batch_size: int, num_workers: int,
                       max_samples: int | None, num_images: int, round_trip: bool) -> dict[str, Any]:
    """`inspect_split` for clips of videos: the video counts, every clip (up to `max_samples`) loaded once,
    the round trip of its frames scored on the people the loaded clips hold, PNGs of whole clips."""
    total = len(dataset)
    count = total if max_samples is None else min(total, int(max_samples))
    if count == 0:
        raise UserError(f"the {name} split holds no clip of {dataset.clip_length} consecutive labelled frames "
                        "of one track; check data.root and the annotations, or lower data.clip_length")
    loader = DataLoader(_Guarded(dataset, range(count)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, persistent_workers=False)
    results: dict[str, list[dict]] = {"quarter": [], "dark": [], "soft_argmax": []}
    errors = {method: 0.0 for method in results}
    unreadable: dict[str, str] = {}
    failed, saved, decode_s, visible_joints, loaded = 0, 0, 0.0, 0, []
    start = time.perf_counter()
    for item in loader:
        for error in item["errors"]:
            failed += 1
            unreadable.setdefault(error["error"], error["message"])
        batch = item["batch"]
        if batch is None:
            continue
        for skipped in batch["meta"]["skipped"]:  # train mode: a clip replaced by the next readable one
            paths = [path for path in str(skipped).split("\n") if path]
            failed += bool(paths)
            for path in paths:
                unreadable.setdefault(path, "skipped by the dataset")
        clips = [dataset.clips[int(i)] for i in batch["index"]]
        loaded += clips
        targets, weights = batch["targets"].numpy(), batch["target_weights"].numpy()  # (B, L, K, ...)
        visible_joints += int((weights > 0).sum())
        for j in range(min(len(clips), num_images - saved)):
            picture = draw_clip(batch["images"][j], targets[j], weights[j], dataset.sigma)
            cv2.imwrite(str(out_dir / f"{name}_{saved:02d}_clip{int(batch['index'][j])}.png"), picture)
            saved += 1
        if round_trip:
            t0 = time.perf_counter()
            length = targets.shape[1]
            flat = targets.reshape(-1, *targets.shape[2:])
            meta = {"image_id": batch["image_ids"].reshape(-1), "scale": batch["scales"].reshape(-1, 2)}
            tracks = batch["track_id"].repeat_interleave(length).tolist()
            gt = np.stack([r.keypoints[:, :2] for clip in clips for r in clip.frames])
            seen = weights.reshape(len(flat), -1) > 0
            for method in results:
                preds, maxvals = decode_heatmaps(flat, batch["centers"].reshape(-1, 2).numpy(),
                                                 meta["scale"].numpy(), method=method, sigma=dataset.sigma)
                errors[method] += float(np.linalg.norm(preds - gt, axis=2)[seen].sum())
                entries = results_from_predictions(preds, maxvals, meta)
                for entry, track in zip(entries, tracks):
                    entry["track_id"] = int(track)
                results[method] += entries
            decode_s += time.perf_counter() - t0
    wall = time.perf_counter() - start
    load_s = max(wall - decode_s, 1e-9)
    scores: dict[str, dict[str, float]] = {}
    if round_trip and loaded:
        truth = covered_videos(dataset.videos, loaded)
        scores = {method: {k: v for k, v in evaluate_posetrack(truth, unique_results(entries)).items()
                           if isinstance(v, (int, float))} for method, entries in results.items()}
    in_clips = {(int(r.image_id), clip.track_id) for clip in dataset.clips for r in clip.frames}
    return {
        "split": name, "kind": "clips", **video_counts(dataset.videos),
        "dropped": dict(dataset.dropped),
        "clip_length": dataset.clip_length, "clip_stride": dataset.clip_stride,
        "clips": total, "clips_inspected": count, "clips_loaded": len(loaded),
        "instances_in_clips": len(in_clips),
        "visible_joints": visible_joints,
        "unreadable_images": len(unreadable),
        "unreadable_clips": failed,
        "unreadable_paths": sorted(unreadable)[:MAX_LISTED],
        "primary_metric": "AP",
        "round_trip": {method: s.get("AP") for method, s in scores.items()} if round_trip else None,
        "round_trip_metrics": scores if round_trip else None,
        "round_trip_error_px": {method: e / max(visible_joints, 1) for method, e in errors.items()}
        if round_trip else None,
        "round_trip_note": "scored on the people of the loaded clips" if round_trip
        else "augmented split: targets are of transformed crops",
        "sigma": dataset.sigma,
        "wall_s": round(wall, 3),
        "load_s": round(load_s, 3),
        "clips_per_s": round((len(loaded) + failed) / load_s, 1),
        "images_written": saved,
        "capped": count < total,
    }


def inspect_data(cfg: DictConfig) -> dict[str, Any]:
    """Build `cfg.data`, inspect the chosen split(s), write summary.json; returns the summary."""
    if cfg.split is not None and cfg.split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)} or null (those that exist), "
                        f"got {cfg.split!r}")
    if cfg.batch_size < 1 or cfg.num_workers < 0 or cfg.num_images < 0:
        raise UserError("batch_size must be >= 1, num_workers and num_images >= 0")
    if cfg.max_samples is not None and cfg.max_samples < 1:
        raise UserError(f"max_samples must be >= 1 or null, got {cfg.max_samples}")
    configure_threads(cfg.threads)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs/inspect") / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    asked = SPLITS[cfg.split] if cfg.split is not None else None
    data, missing = build_splits(cfg.data, asked)
    build_s = time.perf_counter() - start
    splits = []
    for name in (n for n in asked or SPLITS["both"] if getattr(data, n, None) is not None):
        dataset = getattr(data, name)
        round_trip = True
        if getattr(dataset, "train", False):
            if cfg.augment:
                round_trip = False
            else:  # the same pipeline, augmentation off, on a copy (the PoseData is left as built)
                dataset = copy.copy(dataset)
                dataset.train = False
        inspect = inspect_clip_split if isinstance(dataset, ClipDataset) else inspect_split
        splits.append(inspect(dataset, name, out_dir, cfg.batch_size, cfg.num_workers,
                              cfg.max_samples, cfg.num_images, round_trip))
    summary = {"data": getattr(data, "name", None), "input_size": list(data.input_size),
               "heatmap_size": list(data.heatmap_size), "build_s": round(build_s, 3),
               "wall_s": round(time.perf_counter() - start, 3), "out_dir": str(out_dir),
               "splits": splits, "missing_splits": missing}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _score(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if metric == "AP" else f"{value:.2f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report of `inspect_data`'s summary."""
    lines = [f"data {summary['data']}  input {summary['input_size']}  heatmap {summary['heatmap_size']}  "
             f"built in {summary['build_s']:.1f} s"]
    for s in summary["splits"]:
        if s.get("kind") == "clips":
            lines += format_clip_split(s)
            continue
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none reported"
        images = f"{s['images_loaded']}" + (f" (of {s['images_in_annotations']} in the annotations)"
                                            if s["images_in_annotations"] is not None else "")
        lines += [f"[{s['split']}]",
                  f"  images          {images}",
                  f"  instances kept  {s['instances_kept']}" +
                  (f" (first {s['instances_inspected']} inspected)" if s["capped"] else ""),
                  f"  dropped         {dropped}",
                  f"  unreadable      {s['unreadable_images']} image files "
                  f"({s['unreadable_instances']} instances skipped)"]
        lines += [f"    {path}" for path in s["unreadable_paths"]]
        if s["unreadable_images"] > len(s["unreadable_paths"]):
            lines.append(f"    ... and {s['unreadable_images'] - len(s['unreadable_paths'])} more")
        metric = s["primary_metric"]
        if s["round_trip"] is not None:
            rt = s["round_trip"]
            lines.append(f"  round-trip {metric:<4} quarter {_score(rt.get('quarter'), metric)}  "
                         f"dark {_score(rt.get('dark'), metric)}  "
                         f"soft_argmax {_score(rt.get('soft_argmax'), metric)}  (GT -> targets -> decode, sigma "
                         f"{s['sigma']:g})" + ("  [capped: uninspected GT counts as missed]"
                                              if s["capped"] else ""))
            err = s["round_trip_error_px"]
            lines.append(f"  mean error px   quarter {err['quarter']:.3f}  dark {err['dark']:.3f}  "
                         f"soft_argmax {err['soft_argmax']:.3f}  "
                         f"(image pixels, over {s['visible_joints']} joints with a target)")
        else:
            lines.append(f"  round-trip      skipped ({s['round_trip_note']})")
        lines.append(f"  throughput      {s['samples_per_s']:.1f} samples/s  "
                     f"(wall {s['wall_s']:.2f} s, {s['images_written']} PNGs)")
    lines += [f"[{name}] missing, not inspected: {why}" for name, why in summary["missing_splits"].items()]
    lines.append(f"wrote {summary['out_dir']}/summary.json")
    return "\n".join(lines)


def format_clip_split(s: dict[str, Any]) -> list[str]:
    """The report lines of one split of clips (`inspect_clip_split`)."""
    dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if v) or "none"
    lines = [f"[{s['split']}]",
             f"  videos          {s['videos']}  (frames {s['frames']}, labelled {s['labelled_frames']})",
             f"  tracks          {s['tracks']}",
             f"  instances       {s['instances']} in labelled frames  (not usable for clips: {dropped})",
             f"  clips           {s['clips']} of {s['clip_length']} frames, stride {s['clip_stride']}, holding "
             f"{s['instances_in_clips']} instances" +
             (f" (first {s['clips_inspected']} inspected)" if s["capped"] else ""),
             f"  unreadable      {s['unreadable_images']} image files ({s['unreadable_clips']} clips skipped)"]
    lines += [f"    {path}" for path in s["unreadable_paths"]]
    if s["round_trip"] is not None:
        rt, err = s["round_trip"], s["round_trip_error_px"]
        lines += [f"  round-trip AP   quarter {_score(rt.get('quarter'), 'AP')}  dark {_score(rt.get('dark'), 'AP')}  "
                  f"soft_argmax {_score(rt.get('soft_argmax'), 'AP')}  (GT -> targets -> decode, sigma "
                  f"{s['sigma']:g}, {s['round_trip_note']})",
                  f"  mean error px   quarter {err['quarter']:.3f}  dark {err['dark']:.3f}  "
                  f"soft_argmax {err['soft_argmax']:.3f}  (image pixels, over {s['visible_joints']} joints "
                  "with a target)"]
    else:
        lines.append(f"  round-trip      skipped ({s['round_trip_note']})")
    lines.append(f"  throughput      {s['clips_per_s']:.1f} clips/s  (wall {s['wall_s']:.2f} s, "
                 f"{s['images_written']} PNGs)")
    return lines
