"""COCO OKS evaluation, and the full round trip of the ground truth through the pipeline: on the synthetic
set everywhere and on the real coco_mini sample where ../shared holds it (`coco_set` runs both)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.data import DataLoader

from nas.data.coco import CocoTopDown, load_coco
from nas.metrics.coco_eval import STAT_NAMES, evaluate_keypoints
from nas.pose.decode import decode_heatmaps
from nas.data.keypoints import COCO_SIGMAS
from nas.pose.predict import results_from_heatmaps
from tests.conftest import CocoSet


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
def coco_gt(coco_set: CocoSet):
    return load_coco(coco_set.ann_file)


@pytest.fixture(scope="module")
def real_gt(coco_mini_root):
    return load_coco(coco_mini_root / "annotations" / "person_keypoints_val2017.json")


def test_empty_results_score_zero(coco_gt, tmp_path):
    stats = evaluate_keypoints(coco_gt, [], out_json=tmp_path / "res.json")
    assert stats == {name: 0.0 for name in STAT_NAMES}
    assert json.loads((tmp_path / "res.json").read_text()) == []


def test_perfect_predictions_score_one(coco_set, coco_gt, capsys):
    # OKS of a prediction equal to its ground truth is exactly 1, so every threshold matches: AP = AR = 1
    stats = evaluate_keypoints(coco_set.ann_file, _gt_as_results(coco_gt))
    assert capsys.readouterr().out == ""  # pycocotools is silenced
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0)
    # an area range holding ground truth scores 1; one without any gets pycocotools' -1
    areas = [a["area"] for a in coco_gt.loadAnns(coco_gt.getAnnIds()) if a["num_keypoints"] > 0]
    for name, low, high in (("APm", 32 ** 2, 96 ** 2), ("APl", 96 ** 2, 1e10)):
        assert stats[name] == pytest.approx(1.0 if any(low <= a < high for a in areas) else -1.0)
    assert set(stats) == set(STAT_NAMES) and all(isinstance(v, float) for v in stats.values())


def test_far_off_predictions_score_low(real_gt):
    # 40 px off for persons of area ~1e4: OKS of a hip joint (k = 0.214) is
    # exp(-1600 / (2 * 1e4 * 0.214**2)) ~ 0.17, of a shoulder (k = 0.158) ~ 0.04: far below 0.5
    stats = evaluate_keypoints(real_gt, _gt_as_results(real_gt, dx=40.0))
    assert stats["AP"] < 0.3


def _oks_by_hand(ann: dict, dx: float) -> float:
    """COCO's OKS of the annotation's keypoints moved by dx in x: the mean over labelled joints of
    exp(-d^2 / (2 s^2 k^2)) with s^2 = the annotation's area and k = 2 sigma (cocodataset.org/#keypoints-eval)."""
    labelled = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)[:, 2] > 0
    k = 2.0 * np.array(COCO_SIGMAS)[labelled]
    return float(np.mean(np.exp(-dx ** 2 / (2.0 * ann["area"] * k ** 2))))


def _offset_for_oks(ann: dict, oks: float) -> float:
    """The x offset at which `_oks_by_hand` equals `oks` (bisection: OKS falls as the offset grows)."""
    low, high = 0.0, 1e4
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _oks_by_hand(ann, middle) > oks else (low, middle)
    return (low + high) / 2


@pytest.mark.parametrize("oks, expected_ap", [(0.725, 0.5), (0.875, 0.8), (0.3, 0.0), (0.99, 1.0)])
def test_ap_of_one_person_moved_by_a_hand_computed_offset(synthetic_coco, oks, expected_ap):
    # One image with one person, one prediction: at each OKS threshold 0.50, 0.55, ..., 0.95 the AP is 1
    # when OKS >= threshold (a match, precision 1 at recall 1) and 0 otherwise, so AP = the share of the
    # ten thresholds at or below the OKS: 0.725 -> 5 of 10, 0.875 -> 8, 0.3 -> 0, 0.99 -> 10.
    gt = load_coco(synthetic_coco.ann_file)
    alone = [i for i in gt.getImgIds() if len(gt.getAnnIds(imgIds=i)) == 1]
    assert alone, "the synthetic fixture needs an image with one person"
    (ann,) = gt.loadAnns(gt.getAnnIds(imgIds=alone[0]))
    dx = _offset_for_oks(ann, oks)
    (moved,) = [r for r in _gt_as_results(gt, dx=dx) if r["image_id"] == alone[0]]
    assert evaluate_keypoints(gt, [moved], image_ids=[alone[0]])["AP"] == pytest.approx(expected_ap)


def test_sigmas_override_is_used(coco_gt):
    # with OKS constants ~1000x larger, a 40 px error is negligible again (OKS > 0.99 for area >= 1)
    results = _gt_as_results(coco_gt, dx=40.0)
    assert evaluate_keypoints(coco_gt, results)["AP"] < 1.0
    assert evaluate_keypoints(coco_gt, results, sigmas=[100.0] * 17)["AP"] == pytest.approx(1.0)


def test_results_file_is_standard_and_unknown_images_are_refused(coco_gt, tmp_path):
    results = _gt_as_results(coco_gt)
    evaluate_keypoints(coco_gt, results, out_json=tmp_path / "out" / "res.json")
    written = json.loads((tmp_path / "out" / "res.json").read_text())
    people = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds()) if a["num_keypoints"] > 0]
    assert len(written) == len(people) > 0 and set(written[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert "bbox" not in results[0]  # the caller's entries are not modified
    with pytest.raises(ValueError, match="123456"):
        evaluate_keypoints(coco_gt, [dict(results[0], image_id=123456)])


def test_round_trip_of_the_ground_truth(coco_set):
    """GT -> val crops -> target heatmaps -> decode -> COCO results -> OKS AP: nearly lossless."""
    data = CocoTopDown(coco_set.root, coco_set.split, input_size=(256, 192), heatmap_size=(64, 48))
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
