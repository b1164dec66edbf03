"""Evaluation on person-detector boxes: the detection-box loader, OKS-NMS, and the evaluate CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.data.build import coco_data
from nas.data.coco import DEFAULT_BBOX_FILE, CocoTopDown
from nas.data.keypoints import COCO_SIGMAS
from nas.errors import UserError
from nas.metrics.coco_eval import evaluate_keypoints
from nas.pose.nms import nms_per_image, oks_iou, oks_nms, soft_oks_nms
from tests.conftest import REPO_ROOT, CocoSet

SIGMAS = np.array(COCO_SIGMAS)


def _detections(coco_set: CocoSet) -> list[dict]:
    return json.loads((coco_set.root / coco_set.bbox_file).read_text())


def _people(coco_set: CocoSet) -> list[dict]:
    """The annotations the GT-box path keeps, read from the file (all their boxes have an area)."""
    anns = json.loads(coco_set.ann_file.read_text())["annotations"]
    return [a for a in anns if a["num_keypoints"] > 0 and not a.get("iscrowd", 0)]


# --- the detection-box loader -------------------------------------------------------------------

def test_synthetic_detection_file_is_coco_results_format(synthetic_coco):
    """What the generator writes: HRNet's detection-file format, a box for every annotated person
    (its GT box moved a little), low-scored boxes on no one, and duplicates."""
    dets = _detections(synthetic_coco)
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} and d["category_id"] == 1
               and len(d["bbox"]) == 4 and min(d["bbox"][2:]) >= 1.0 and 0 < d["score"] <= 1
               for d in dets)
    doc = json.loads(synthetic_coco.ann_file.read_text())
    assert {d["image_id"] for d in dets} <= {i["id"] for i in doc["images"]}
    overlaps = [[_iou(d["bbox"], a["bbox"]) if d["image_id"] == a["image_id"] else 0.0
                 for a in doc["annotations"]] for d in dets]  # (detections, people)
    per_person = np.array(overlaps).T
    assert (per_person.max(axis=1) > 0.6).all()  # everyone is found
    assert ((per_person > 0.4).sum(axis=1) >= 2).any()  # someone twice
    assert any(max(row) < 0.3 and d["score"] < 0.3 for d, row in zip(dets, overlaps))  # no one


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_one_sample_per_person_detection_above_threshold(coco_set, threshold):
    dets = _detections(coco_set)
    expected = [d for d in dets if d["category_id"] == 1 and d["score"] >= threshold]
    assert 0 < len(expected) <= len(dets)
    assert len(dets) == (118 if coco_set.split == "val2017" else len(dets))  # coco_mini's real file
    data = CocoTopDown(coco_set.root, coco_set.split, use_gt_bbox=False, det_score_threshold=threshold,
                       bbox_file=coco_set.bbox_file)
    assert len(data) == len(expected)
    assert [r.score for r in data.samples] == pytest.approx([d["score"] for d in expected])
    assert [r.image_id for r in data.samples] == [d["image_id"] for d in expected]


def test_detection_sample_has_its_box_score_and_no_targets(coco_set):
    det = _detections(coco_set)[0]
    data = CocoTopDown(coco_set.root, coco_set.split, use_gt_bbox=False, bbox_file=coco_set.bbox_file)
    sample = data[0]
    x, y, w, h = det["bbox"]
    # box (x, y, w, h) -> centre (x + w/2, y + h/2); 256x192 input: aspect 0.75, padding 1.25
    assert sample["meta"]["center"] == pytest.approx([x + w / 2, y + h / 2], abs=1e-3)
    width, height = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
    assert sample["meta"]["scale"] == pytest.approx([1.25 * width, 1.25 * height], rel=1e-5)
    assert sample["meta"]["score"] == pytest.approx(det["score"])
    assert float(sample["target_weight"].sum()) == 0.0


def test_gt_box_path_is_unchanged(coco_set):
    data = CocoTopDown(coco_set.root, coco_set.split)
    assert len(data) == len(_people(coco_set))  # 12 for coco_mini, as in test_coco_data
    assert all(r.score == 1.0 for r in data.samples)


def _copy_without_detections(tmp_path: Path, coco_set: CocoSet) -> Path:
    """A root reusing the set's annotations and images (linked), with no detection file yet."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / coco_set.ann_file.name).symlink_to(coco_set.ann_file)
    (tmp_path / coco_set.split).symlink_to(coco_set.image_dir)
    return tmp_path


def test_detection_file_errors(tmp_path, coco_set):
    root, split = _copy_without_detections(tmp_path, coco_set), coco_set.split
    image_id = _people(coco_set)[0]["image_id"]
    with pytest.raises(FileNotFoundError, match="COCO_val2017_detections_AP_H_56_person.json"):
        CocoTopDown(root, split, use_gt_bbox=False)
    (root / "dets.json").write_text(json.dumps({"image_id": image_id}))
    with pytest.raises(ValueError, match="list"):
        CocoTopDown(root, split, use_gt_bbox=False, bbox_file="dets.json")
    (root / "dets.json").write_text(json.dumps([{"image_id": image_id, "bbox": [0, 0, 5, 5]}]))
    with pytest.raises(ValueError, match="category_id"):
        CocoTopDown(root, split, use_gt_bbox=False, bbox_file="dets.json")
    (root / "dets.json").write_text(json.dumps([{"image_id": image_id, "category_id": 1, "bbox": 5,
                                                 "score": 0.9}]))
    with pytest.raises(ValueError, match="4-number bbox"):
        CocoTopDown(root, split, use_gt_bbox=False, bbox_file="dets.json")
    bad = [{"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}]
    (root / "dets.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="123456789"):
        CocoTopDown(root, split, use_gt_bbox=False, bbox_file=str(root / "dets.json"))
    with pytest.raises(ValueError, match="evaluation only"):
        CocoTopDown(coco_set.root, split, train=True, use_gt_bbox=False)


def test_coco_data_applies_detections_to_val_only(coco_set, tmp_path):
    splits = dict(train_split=coco_set.split, val_split=coco_set.split)
    data = coco_data(str(coco_set.root), **splits, use_gt_bbox=False, bbox_file=coco_set.bbox_file,
                     nms="soft_oks", nms_threshold=0.8)
    assert len(data.train) == len(_people(coco_set)) and len(data.val) == len(_detections(coco_set))
    assert (data.nms, data.nms_threshold) == ("soft_oks", 0.8)
    with pytest.raises(UserError, match="data.nms"):
        coco_data(str(coco_set.root), **splits, nms="box")
    with pytest.raises(FileNotFoundError, match="nope.json"):  # the entry points print it once
        coco_data(str(coco_set.root), **splits, use_gt_bbox=False, bbox_file="nope.json")
    (tmp_path / "dets.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="entry 0"):
        coco_data(str(coco_set.root), **splits, use_gt_bbox=False, bbox_file=str(tmp_path / "dets.json"))


# --- OKS and NMS --------------------------------------------------------------------------------

def _pose(dx: float = 0.0, conf: float = 0.9) -> np.ndarray:
    """A (17, 3) pose: joints spread over a 100x100 box, shifted by dx pixels."""
    grid = np.stack([np.arange(17) * 6.0 + dx, np.arange(17) * 5.0 + 10.0, np.full(17, conf)], axis=1)
    return grid


def test_oks_of_identical_is_one_and_far_apart_is_zero():
    pose = _pose()
    oks = oks_iou(pose, np.stack([pose, _pose(dx=1000.0)]), 1e4, np.array([1e4, 1e4]), SIGMAS)
    assert oks == pytest.approx([1.0, 0.0], abs=1e-9)


def test_oks_matches_the_formula_by_hand():
    # every joint moved by d = 3 px; both areas 1e4 -> s^2 = 1e4;
    # per joint exp(-d^2 / (2 s^2 (2 sigma)^2)) = exp(-9 / (2e4 (2 sigma)^2))
    oks = oks_iou(_pose(), _pose(dx=3.0)[None], 1e4, np.array([1e4]), SIGMAS)
    by_hand = np.mean([np.exp(-9.0 / (2 * 1e4 * (2 * s) ** 2)) for s in COCO_SIGMAS])
    assert oks[0] == pytest.approx(by_hand, rel=1e-9)
    assert 0.5 < by_hand < 1.0


def test_oks_vis_threshold_ignores_low_confidence_joints():
    low = _pose(conf=0.1)
    assert oks_iou(_pose(), low[None], 1e4, np.array([1e4]), SIGMAS, vis_threshold=0.2)[0] == 0.0
    half = _pose(dx=0.0)
    half[8:, 2] = 0.1
    moved = half.copy()
    moved[8:, :2] += 500.0  # only low-confidence joints move: they do not count
    assert oks_iou(half, moved[None], 1e4, np.array([1e4]), SIGMAS, vis_threshold=0.2)[0] == 1.0


def _instances() -> list[dict]:
    # 0 and 1: the same person (1 px apart, OKS ~1); 2: a lower-scored one 2 px away from 0;
    # 3: someone 500 px away
    return [{"keypoints": _pose(0.0), "score": 0.8, "area": 1e4},
            {"keypoints": _pose(1.0).reshape(-1).tolist(), "score": 0.9, "area": 1e4},
            {"keypoints": _pose(2.0), "score": 0.3, "area": 1e4},
            {"keypoints": _pose(500.0), "score": 0.5, "area": 1e4}]


def test_greedy_oks_nms_keeps_the_best_of_each_person():
    assert oks_nms(_instances(), 0.9, SIGMAS) == [1, 3]
    # threshold 1.0: nothing has OKS above it, so all are kept, by decreasing score
    assert oks_nms(_instances(), 1.0, SIGMAS) == [1, 0, 3, 2]
    assert oks_nms([], 0.9, SIGMAS) == []


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_oks_nms_lowers_duplicates_only(method):
    scores = soft_oks_nms(_instances(), 0.9, SIGMAS, method=method)
    assert scores[1] == 0.9 and scores[3] == 0.5  # the best, and the distant one, are untouched
    assert scores[0] < 0.8 * 0.5 and scores[2] < 0.3 * 0.5  # OKS ~1: (1 - oks) or exp(-1/0.5) < 0.5


def test_nms_per_image_keeps_images_apart():
    a, b = _instances()[:2]
    results = [{**a, "image_id": 1}, {**b, "image_id": 2}, {**a, "image_id": 2, "score": 0.1}]
    kept = nms_per_image(results, "oks", 0.9, SIGMAS)
    assert sorted((r["image_id"], r["score"]) for r in kept) == [(1, 0.8), (2, 0.9)]
    soft = nms_per_image(results, "soft_oks", 0.9, SIGMAS)
    assert len(soft) == 3 and sorted(r["score"] for r in soft)[0] < 0.1


# --- end to end ---------------------------------------------------------------------------------

def _iou(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_gt_keypoints_on_detections_with_nms_score_high(coco_set):
    """Each detection 'predicts' the GT pose whose box it overlaps most: after NMS the AP is high."""
    data = CocoTopDown(coco_set.root, coco_set.split, use_gt_bbox=False, bbox_file=coco_set.bbox_file)
    anns = data.coco.loadAnns(data.coco.getAnnIds(catIds=[1], iscrowd=False))
    results, assigned = [], set()
    for record in data.samples:
        same = [a for a in anns if a["image_id"] == record.image_id and a["num_keypoints"] > 0]
        if not same:  # a box on an image without people: nothing to copy
            continue
        best = max(same, key=lambda a: _iou(a["bbox"], record.box.tolist()))
        assigned.add(best["id"])
        kpts = np.array(best["keypoints"], dtype=float).reshape(-1, 3)
        kpts[:, 2] = np.where(kpts[:, 2] > 0, 1.0, 0.0)  # labelled joints get confidence 1
        results.append({"image_id": record.image_id, "keypoints": kpts.reshape(-1).tolist(),
                        "score": record.score, "area": float(np.prod(record.scale))})
    kept = nms_per_image(results, "oks", 0.9, SIGMAS, vis_threshold=0.2)
    # duplicates of a pose have OKS 1 and go; distinct people are far below 0.9 apart
    assert len(kept) == len(assigned) < len(results)
    ap = evaluate_keypoints(data.coco, kept)["AP"]
    ap_without_nms = evaluate_keypoints(data.coco, results)["AP"]
    print(f"GT keypoints on detector boxes: AP {ap:.4f} with OKS-NMS 0.9, {ap_without_nms:.4f} without")
    assert ap >= 0.8 and ap > ap_without_nms  # duplicates outranking true matches cost AP


def _published_factor(keypoints: list[float]) -> float:
    """HRNet's/MMPose's rescoring factor: the mean confidence of the joints above 0.2, 0 when none is."""
    conf = np.array(keypoints[2::3])
    return float(conf[conf > 0.2].mean()) if (conf > 0.2).any() else 0.0


@pytest.mark.slow
def test_evaluate_cli_on_detector_boxes(tmp_path, coco_set):
    """Retrain one epoch, evaluate on the detector boxes: one prediction per box at most (OKS-NMS), each
    scored by its box's score times the published rescoring factor."""
    env = {**os.environ, "POSENAS_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    train_split = "val2017" if coco_set.split == "val2017" else "train"  # coco_mini has no train split
    common = ["data=coco", f"data.root={coco_set.root}", f"data.train_split={train_split}",
              f"data.val_split={coco_set.split}", f"data.bbox_file={coco_set.bbox_file}", "num_workers=0"]
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "nas.retrain", "genotypes/weak_plain_conv.json", *common,
                    "epochs=1", "batch_size=4", f"run_dir={run_dir}"], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True, text=True, timeout=300)
    out = subprocess.run([sys.executable, "-m", "nas.evaluate", str(run_dir / "best.pt"), *common,
                          "data.use_gt_bbox=false", "flip_test=false"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "AP " in out.stdout
    metrics = json.loads((run_dir / "eval_metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    preds = json.loads((run_dir / "eval_predictions.json").read_text())
    dets = _detections(coco_set)
    assert 0 < len(preds) <= len(dets)  # one per detector box at most (OKS-NMS may drop some)
    for pred in preds:  # some box of its image, times the factor, gives its score
        factor = _published_factor(pred["keypoints"])
        assert any(abs(pred["score"] - d["score"] * factor) < 1e-5
                   for d in dets if d["image_id"] == pred["image_id"]), pred["score"]
    # a val-only download (no training annotations, the common first download) evaluates the same
    val_only = tmp_path / "val_only"
    (val_only / "annotations").mkdir(parents=True)
    shutil.copy(coco_set.ann_file, val_only / "annotations" / coco_set.ann_file.name)
    (val_only / coco_set.split).symlink_to(coco_set.image_dir.resolve())
    (val_only / coco_set.bbox_file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(coco_set.root / coco_set.bbox_file, val_only / coco_set.bbox_file)
    args = [a.replace(f"data.root={coco_set.root}", f"data.root={val_only}") for a in common]
    out = subprocess.run([sys.executable, "-m", "nas.evaluate", str(run_dir / "best.pt"), *args,
                          "data.use_gt_bbox=false", "flip_test=false", f"out_dir={tmp_path / 'val_only_eval'}"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "val_only_eval" / "eval_metrics.json").read_text()) == metrics
