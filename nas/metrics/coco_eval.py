"""COCO keypoint evaluation (OKS AP/AR) with pycocotools, quiet and safe on empty results.

`load_coco` lives here, with the rest of the pycocotools wrapping: the COCO dataset (nas/data/coco.py)
imports it and its metric from this module, and this module imports nothing from the datasets but the
keypoint constants, so the two import in one direction only.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nas.data.keypoints import COCO_SIGMAS

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools COCO index of `ann_file`, without its progress printing."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _clean(result: dict) -> dict:
    """A result entry in the standard format, plain Python types only (json- and loadRes-safe)."""
    return {"image_id": int(result["image_id"]), "category_id": int(result.get("category_id", 1)),
            "keypoints": [float(v) for v in result["keypoints"]], "score": float(result["score"])}


def write_results(results: list[dict], out_json: str | Path) -> Path:
    """Write COCO keypoint results to `out_json` (parents created)."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps([_clean(r) for r in results]))
    return out_json


def evaluate_keypoints(coco_gt: COCO | str | Path, results: list[dict],
                       out_json: str | Path | None = None, verbose: bool = False,
                       sigmas: Sequence[float] | None = None,
                       image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """OKS AP/AR of keypoint `results` against the ground truth (a COCO object or annotation path).

    Returns the ten standard COCO keypoint stats, keyed by STAT_NAMES. Empty results give all zeros.
    pycocotools reports -1 for an area range without ground truth; that value is passed through.
    `sigmas` overrides the per-joint OKS constants (default: the COCO ones). `image_ids` restricts
    the evaluation to those images (a search scores candidates on a subset of the training images).
    """
    gt = coco_gt if isinstance(coco_gt, COCO) else load_coco(coco_gt)
    results = [_clean(r) for r in results]
    if out_json is not None:
        write_results(results, out_json)
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"results name image ids absent from the ground truth: {sorted(unknown)[:10]}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_eval = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas if sigmas is not None else COCO_SIGMAS)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
