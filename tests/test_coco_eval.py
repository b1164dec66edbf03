"""COCO OKS evaluation, and the full round trip of the real coco_mini ground truth through the pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.data import DataLoader

from nas.data.coco import CocoTopDown, load_coco
from nas.metrics.coco_eval import STAT_NAMES, evaluate_keypoints
from nas.pose.decode import decode_heatmaps
from nas.pose.predict import results_from_heatmaps


def _gt_as_results(coco, dx: float = 0.0) -> list[dict]:
    """The annotated persons' own keypoints as predictions (score 1), optionally moved by dx pixels."""
    results = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        if ann["num_keypoints"] == 0:
            continue
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
        keypoints[:, 0] += dx
        keypoints[:, 2] = 1.0
        results.append({"image_id": ann["image_id"], "category_id": 1,
                        "keypoints": keypoints.ravel().tolist(), "score": 1.0})
    return results


@pytest.fixture(scope="module")
def coco_gt(coco_mini_root):
    return load_coco(coco_mini_root / "annotations" / "person_keypoints_val2017.json")


def test_empty_results_score_zero(coco_gt, tmp_path):
    stats = evaluate_keypoints(coco_gt, [], out_json=tmp_path / "res.json")
    assert stats == {name: 0.0 for name in STAT_NAMES}
    assert json.loads((tmp_path / "res.json").read_text()) == []


def test_perfect_predictions_score_one(coco_mini_root, coco_gt, capsys):
    # OKS of a prediction equal to its ground truth is exactly 1, so every threshold matches: AP = AR = 1
    path = coco_mini_root / "annotations" / "person_keypoints_val2017.json"
    stats = evaluate_keypoints(path, _gt_as_results(coco_gt))
    assert capsys.readouterr().out == ""  # pycocotools is silenced
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0) and stats["APl"] == pytest.approx(1.0)
    assert set(stats) == set(STAT_NAMES) and all(isinstance(v, float) for v in stats.values())


def test_far_off_predictions_score_low(coco_gt):
    # 40 px off for persons of area ~1e4: OKS of a hip joint (k = 0.214) is
    # exp(-1600 / (2 * 1e4 * 0.214**2)) ~ 0.17, of a shoulder (k = 0.158) ~ 0.04: far below 0.5
    stats = evaluate_keypoints(coco_gt, _gt_as_results(coco_gt, dx=40.0))
    assert stats["AP"] < 0.3


def test_sigmas_override_is_used(coco_gt):
    # with OKS constants 100x larger, a 40 px error is negligible again
    results = _gt_as_results(coco_gt, dx=40.0)
    assert evaluate_keypoints(coco_gt, results, sigmas=[10.0] * 17)["AP"] == pytest.approx(1.0)


def test_results_file_is_standard_and_unknown_images_are_refused(coco_gt, tmp_path):
    results = _gt_as_results(coco_gt)
    evaluate_keypoints(coco_gt, results, out_json=tmp_path / "out" / "res.json")
    written = json.loads((tmp_path / "out" / "res.json").read_text())
    assert len(written) == 12 and set(written[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert "bbox" not in results[0]  # the caller's entries are not modified
    with pytest.raises(ValueError, match="123456"):
        evaluate_keypoints(coco_gt, [dict(results[0], image_id=123456)])


def test_round_trip_of_real_ground_truth(coco_mini_root):
    """GT -> val crops -> target heatmaps -> decode -> COCO results -> OKS AP: nearly lossless."""
    data = CocoTopDown(coco_mini_root, "val2017", input_size=(256, 192), heatmap_size=(64, 48))
    results, worst = [], 0.0
    for batch in DataLoader(data, batch_size=4):
        results += results_from_heatmaps(batch["target"], batch["meta"])
        preds, _ = decode_heatmaps(batch["target"].numpy(), batch["meta"]["center"].numpy(),
                                   batch["meta"]["scale"].numpy())
        for pred, index, weight in zip(preds, batch["meta"]["index"], batch["target_weight"]):
            keypoints = data.samples[int(index)].keypoints
            pixel = data.samples[int(index)].scale / np.array([48.0, 64.0])  # image px per heatmap px
            errors = np.abs(pred - keypoints[:, :2]) / pixel  # (K, 2) in heatmap pixels
            worst = max(worst, float(errors[weight[:, 0].numpy() > 0].max()))
    assert worst <= 0.25 + 1e-3  # the quarter-pixel step bounds the decoding error
    stats = evaluate_keypoints(data.coco, results)
    assert stats["AP"] >= 0.9
