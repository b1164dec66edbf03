"""Person-detector boxes for the synthetic data, so the detector-box evaluation path (data.use_gt_bbox=false,
OKS-NMS, rescoring) runs on every machine, not only where a real detection file lies.

The file has the COCO results format of HRNet's `COCO_val2017_detections_AP_H_56_person.json`: a JSON list
of {image_id, category_id: 1, bbox: [x, y, w, h], score}, highest score first within each image. What a
real detector gets wrong is imitated, deterministically from the generator's seed:
- every annotated person gets a box: its ground-truth box jittered (centre and size), score 0.5..1;
- some people get a second, looser box with a middling score (a duplicate that OKS-NMS must remove);
- some images get a box or two where no annotated person is, with a low score (false positives).
"""
from __future__ import annotations

import numpy as np

DETECTIONS_FILE = "person_detection_results/synthetic_{split}_detections.json"  # relative to the root
DETECTION_STREAM = 7  # the last seed word of the detections' RNG: the rendering's draws stay unchanged
JITTER = 0.05                 # std of the box centre shift and log-size change, relative to the box
# a duplicate may outscore another person's true box, as a real detector's do: without OKS-NMS it then
# ranks a false positive above a true match and costs AP
TRUE_SCORE = (0.5, 1.0)
DUPLICATE_PROB, DUPLICATE_SCORE = 0.3, (0.2, 0.7)
FALSE_POSITIVE_PROB, FALSE_POSITIVE_SCORE = 0.5, (0.02, 0.3)


def _clipped(x: float, y: float, w: float, h: float, height: int, width: int) -> list[float] | None:
    """[x, y, w, h] cut to the image, rounded to 0.01 px; None when less than a pixel remains."""
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _jittered(rng: np.random.Generator, bbox: list[float], spread: float, height: int,
              width: int) -> list[float] | None:
    x, y, w, h = bbox
    cx, cy = x + w / 2 + rng.normal(0, spread) * w, y + h / 2 + rng.normal(0, spread) * h
    w, h = w * float(np.exp(rng.normal(0, spread))), h * float(np.exp(rng.normal(0, spread)))
    return _clipped(cx - w / 2, cy - h / 2, w, h, height, width)


def _false_positive(rng: np.random.Generator, height: int, width: int) -> list[float] | None:
    w, h = rng.uniform(0.1, 0.35) * width, rng.uniform(0.2, 0.6) * height
    return _clipped(rng.uniform(0, width - w), rng.uniform(0, height - h), w, h, height, width)


def detect(rng: np.random.Generator, annotations: list[dict], image_id: int, height: int,
           width: int) -> list[dict]:
    """The detector entries of one image from its people's COCO annotations (module doc)."""
    boxes: list[tuple[list[float] | None, float]] = []
    for ann in annotations:
        boxes.append((_jittered(rng, ann["bbox"], JITTER, height, width), rng.uniform(*TRUE_SCORE)))
        if rng.random() < DUPLICATE_PROB:
            boxes.append((_jittered(rng, ann["bbox"], 3 * JITTER, height, width),
                          rng.uniform(*DUPLICATE_SCORE)))
    if rng.random() < FALSE_POSITIVE_PROB:
        for _ in range(int(rng.integers(1, 3))):
            boxes.append((_false_positive(rng, height, width), rng.uniform(*FALSE_POSITIVE_SCORE)))
    entries = [{"image_id": int(image_id), "category_id": 1, "bbox": box, "score": round(float(s), 4)}
               for box, s in boxes if box is not None]
    return sorted(entries, key=lambda entry: -entry["score"])
