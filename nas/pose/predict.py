"""Run a pose model over a top-down loader and turn its heatmaps into COCO keypoint results."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.data.keypoints import COCO_SIGMAS
from nas.pose.decode import decode_heatmaps
from nas.pose.flip import flip_test
from nas.pose.loss import final_heatmaps
from nas.pose.nms import nms_per_image

KEYPOINT_SCORE_THRESHOLD = 0.2  # joints above this confidence count in the instance score (HRNet)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def instance_scores(maxvals: np.ndarray, box_scores: np.ndarray) -> np.ndarray:
    """(N,) box score times the mean confidence of the joints above KEYPOINT_SCORE_THRESHOLD.

    The rescoring of HRNet's and MMPose's COCO evaluation: a pose with no joint above the threshold
    gets a keypoint factor of 0, so its score is 0 whatever its box score (it ranks last in the AP
    computation). Following the published rule keeps our AP comparable with their tables.
    """
    conf = maxvals[..., 0]  # (N, K)
    above = conf > KEYPOINT_SCORE_THRESHOLD
    count = above.sum(axis=1)
    mean = (conf * above).sum(axis=1) / np.maximum(count, 1)  # 0 where no joint is above
    return box_scores * mean


def results_from_predictions(preds: np.ndarray, maxvals: np.ndarray,
                             meta: Mapping[str, Any]) -> list[dict]:
    """COCO keypoint result entries from image preds (N, K, 2) and maxvals (N, K, 1).

    With `meta["index"]`, each entry also gets `index`, the dataset sample it comes from.
    With `meta["scale"]`, each entry also gets `area`: the crop's w * h in pixels, i.e. the box grown
    to the input's aspect ratio and padded (HRNet's `scale[0] * scale[1] * 200**2`), which OKS-NMS uses.
    """
    image_ids = _numpy(meta["image_id"]).reshape(-1)
    box_scores = _numpy(meta["score"]).reshape(-1).astype(np.float64) if "score" in meta \
        else np.ones(len(preds))
    scores = instance_scores(maxvals, box_scores)
    flat = np.concatenate([preds, maxvals], axis=2).reshape(len(preds), -1)  # (N, 3K)
    results = [{"image_id": int(image_ids[i]), "category_id": 1,
                "keypoints": [float(v) for v in flat[i]], "score": float(scores[i])}
               for i in range(len(preds))]
    if "index" in meta:  # the dataset sample of each entry (MPII aligns predictions with people by it)
        for result, index in zip(results, _numpy(meta["index"]).reshape(-1)):
            result["index"] = int(index)
    if "scale" in meta:
        scales = _numpy(meta["scale"]).reshape(-1, 2).astype(np.float64)
        for result, (w, h) in zip(results, scales):
            result["area"] = float(w * h)
    return results


def results_from_heatmaps(heatmaps: np.ndarray | torch.Tensor, meta: Mapping[str, Any],
                          decode: str = "quarter", sigma: float = 2.0) -> list[dict]:
    """Decode heatmaps (N, K, h, w) of the crops described by `meta` into COCO result entries.

    `meta` is the dataset's meta dict, collated (tensors) or not: image_id, center, scale, score.
    `decode` is the sub-pixel refinement ("quarter" or "dark"); `sigma` the targets' Gaussian, for DARK.
    """
    centers = _numpy(meta["center"]).reshape(-1, 2)
    scales = _numpy(meta["scale"]).reshape(-1, 2)
    preds, maxvals = decode_heatmaps(_numpy(heatmaps), centers, scales, method=decode, sigma=sigma)
    return results_from_predictions(preds, maxvals, meta)


def predict_coco(model: nn.Module, loader: Iterable[dict], device: torch.device | str,
                 flip_pairs: Sequence[tuple[int, int]], flip: bool = True, nms: str | None = None,
                 nms_threshold: float = 0.9, sigmas: Sequence[float] | None = None,
                 decode: str = "quarter", sigma: float = 2.0, gather_total: int | None = None) -> list[dict]:
    """COCO keypoint results of `model` on every batch of `loader` (eval mode, no gradients).

    `gather_total`: the loader is this rank's share of a dataset of that many samples
    (`make_loader(..., shard=True)`); every rank's results are gathered, in dataset order, before the NMS,
    so every rank returns what one process would.

    `nms` ("oks", "soft_oks" or None) applies OKS-NMS within each image, comparing only joints above
    KEYPOINT_SCORE_THRESHOLD as HRNet does; `sigmas` are its per-joint OKS constants (default COCO's).
    `decode`/`sigma` choose the heatmap decoder (see `results_from_heatmaps`).
    The model's previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    results: list[dict] = []
    with torch.no_grad():
        for batch in loader:
            images = batch["image"].to(device)  # (B, 3, H, W)
            heatmaps = flip_test(model, images, flip_pairs) if flip else final_heatmaps(model(images))
            results += results_from_heatmaps(heatmaps.float(), batch["meta"], decode, sigma)
    model.train(was_training)
    if gather_total is not None:
        from nas.engine.distributed import gather_sharded, world
        if world().enabled:
            results = gather_sharded(results, gather_total)
    if nms is None:
        return results
    return nms_per_image(results, nms, nms_threshold, COCO_SIGMAS if sigmas is None else sigmas,
                         KEYPOINT_SCORE_THRESHOLD)
