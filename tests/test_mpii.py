"""MPII: loader conventions (200-px scale, 1-based json, centre shift, flip pairs) and PCKh, by hand."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nas.data.mpii import MPII_FLIP_PAIRS, MPII_JOINTS, MpiiTopDown, evaluate_mpii, mpii_center_scale
from nas.data.transforms import flip_keypoints
from nas.metrics.pckh import (HRNET_MEAN01_KEY, MPII_MAT_NAMES, SOURCE_FALLBACK, SOURCE_MAT, pckh,
                              pckh_table)

# ---------------------------------------------------------------- the hand-worked PCKh example
# Three people, normalisers (head sizes) 15, 30 and 60 px, so PCKh@0.5 accepts errors up to 7.5, 15, 30.
# Errors (px) put on the predictions; every other joint is exact:
#   person 0: r_ankle 9 (miss), head_top (-4.5, -6) = 7.5 (hit, exactly on the bound), r_wrist 4.5 (hit)
#   person 1: r_ankle 12 (hit), l_wrist 16.5 (miss), pelvis 150 (miss, but pelvis is not in Mean)
#   person 2: l_wrist 28.5 (hit); its r_ankle is not visible (error 1000, must not count)
# PCKh@0.5 per joint: r_ankle 1/2 = 50 %, l_wrist 2/3, pelvis 2/3, all others 3/3.
#   Head = head_top = 100; Wrist = (100 + 66.67) / 2 = 83.33; Ankle = (50 + 100) / 2 = 75; others 100.
#   Mean pools the 14 joints without pelvis/thorax: 14 * 3 - 1 = 41 visible, 2 misses -> 39 / 41.
#   (Pooling all 16 would give (39 + 2 + 3) / 47 instead.)
# PCKh@0.1 accepts 1.5, 3, 6 px: every nonzero error misses. Mean-joint misses: p0 r_ankle, head_top,
#   r_wrist; p1 r_ankle, l_wrist; p2 l_wrist -> 35 / 41. Head = 2/3; Wrist = (2/3 + 1/3) / 2 = 50 %;
#   Ankle = (0/2 + 3/3) / 2 = 50 %.
HEAD_SIZES = np.array([15.0, 30.0, 60.0])
MEAN_ORDER = [j for j in range(16) if j not in (6, 7)]  # the joints Mean pools
ERRORS = {(0, 0): (9.0, 0.0), (0, 9): (-4.5, -6.0), (0, 10): (4.5, 0.0), (1, 0): (12.0, 0.0),
          (1, 15): (16.5, 0.0), (1, 6): (150.0, 0.0), (2, 15): (28.5, 0.0), (2, 0): (1000.0, 0.0)}
EXPECTED_05 = {"Head": 100.0, "Shoulder": 100.0, "Elbow": 100.0, "Wrist": 250.0 / 3, "Hip": 100.0,
               "Knee": 100.0, "Ankle": 75.0, "Mean": 100.0 * 39 / 41}
EXPECTED_01 = {"Head@0.1": 200.0 / 3, "Shoulder@0.1": 100.0, "Elbow@0.1": 100.0, "Wrist@0.1": 50.0,
               "Hip@0.1": 100.0, "Knee@0.1": 100.0, "Ankle@0.1": 50.0, "Mean@0.1": 100.0 * 35 / 41}


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt, preds, visible) of the hand-worked example; gt joints spread over a 300-px image."""
    rng = np.random.default_rng(0)
    gt = rng.uniform(50, 250, size=(3, 16, 2))
    preds = gt.copy()
    for (person, joint), offset in ERRORS.items():
        preds[person, joint] += offset
    visible = np.ones((3, 16), dtype=bool)
    visible[2, 0] = False
    return gt, preds, visible


def test_pckh_hand_worked_example():
    gt, preds, visible = _example()
    per_joint, mean = pckh(preds, gt, visible, HEAD_SIZES, 0.5)
    assert per_joint[0] == pytest.approx(50.0)
    assert per_joint[15] == pytest.approx(200.0 / 3) and per_joint[6] == pytest.approx(200.0 / 3)
    assert mean == pytest.approx(100.0 * 39 / 41)
    table = pckh_table(preds, gt, visible, HEAD_SIZES)
    # no error lies between 0.1 and 0.11 head sizes here, so HRNet's "Mean@0.1" equals the exact one
    assert table == pytest.approx({**EXPECTED_05, **EXPECTED_01, HRNET_MEAN01_KEY: 100.0 * 35 / 41})


def test_mean_at_01_exact_and_hrnet_threshold_011():
    # One person, head size 20 px: 0.1 -> 2.0 px, 0.11 -> 2.2 px. Errors: r_knee 2.1 px (0.105 head
    # sizes, between the two), l_knee 2.0 px (exactly 0.1: a hit at both, `<=`), l_ankle 2.3 px (0.115:
    # a miss at both); the other 11 Mean joints exact, pelvis/thorax far off (not in Mean).
    # Exact 0.1: r_knee and l_ankle miss, 12/14. At 0.11: only l_ankle misses, 13/14.
    # (HRNet reads np.arange(0, 0.51, 0.01)[11], which is 0.11.)
    gt = np.tile(np.arange(16, dtype=np.float64)[:, None] * 10.0, (1, 2))[None]  # (1, 16, 2)
    preds = gt.copy()
    preds[0, 1, 0] += 2.1   # r_knee
    preds[0, 4, 1] -= 2.0   # l_knee
    preds[0, 5, 0] += 2.3   # l_ankle
    preds[0, 6:8] += 50.0   # pelvis, thorax
    table = pckh_table(preds, gt, np.ones((1, 16), bool), np.array([20.0]))
    assert table["Mean@0.1"] == pytest.approx(100.0 * 12 / 14)
    assert table[HRNET_MEAN01_KEY] == pytest.approx(100.0 * 13 / 14)
    assert table["Knee@0.1"] == pytest.approx(50.0) and table["Mean"] == pytest.approx(100.0)


def test_pckh_metric_does_not_import_the_dataset_module():
    """nas.metrics.pckh is imported by nas.data.mpii; the reverse import would make a circle."""
    import ast
    source = (Path(__file__).resolve().parents[1] / "nas" / "metrics" / "pckh.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not any(name and name.startswith("nas.data") for name in imported), imported


def _write_mat(path: Path, gt0: np.ndarray, visible: np.ndarray, box_wh: np.ndarray) -> None:
    """gt_valid.mat in the official field layout (1-based coordinates, joints x coords x people)."""
    from scipy.io import savemat
    corner = np.full((len(gt0), 2), 11.0)
    boxes = np.stack([corner, corner + box_wh], axis=0).transpose(0, 2, 1)  # (2, 2, N)
    names = np.empty((1, 16), dtype=object)
    for i, name in enumerate(MPII_MAT_NAMES):
        names[0, i] = np.array([name])
    savemat(str(path), {"pos_gt_src": np.transpose(gt0 + 1.0, (1, 2, 0)),
                        "jnt_missing": (~visible).T.astype(np.float64),
                        "headboxes_src": boxes, "dataset_joints": names})


def test_pckh_from_gt_valid_mat(tmp_path):
    # Head boxes chosen so 0.6 * diagonal = 15, 30, 60: boxes 15x20, 30x40, 60x80 have diagonals
    # 25, 50, 100. The .mat is 1-based: forgetting its -1 would move person 0's head_top error from
    # (-4.5, -6) to (-5.5, -7), 8.9 px, a miss, and Head would drop to 66.67.
    gt, preds, visible = _example()
    (tmp_path / "annot").mkdir()
    _write_mat(tmp_path / "annot" / "gt_valid.mat", gt, visible,
               np.array([[15.0, 20.0], [30.0, 40.0], [60.0, 80.0]]))
    result = evaluate_mpii(preds, tmp_path, "valid")
    assert result["head_size_source"] == SOURCE_MAT
    assert {k: result[k] for k in EXPECTED_05} == pytest.approx(EXPECTED_05)
    assert result["Mean@0.1"] == pytest.approx(100.0 * 35 / 41)


def _person(image: str, center, scale, joints: dict[int, tuple[float, float]]) -> dict:
    """A json entry in the 1-based conversion format; joints not named are unlabelled (-1, vis 0)."""
    coords = [list(joints.get(j, (-1.0, -1.0))) for j in range(16)]
    return {"image": image, "center": list(center), "scale": scale, "joints": coords,
            "joints_vis": [1 if j in joints else 0 for j in range(16)]}


def _fallback_people(tmp_path: Path) -> np.ndarray:
    """Writes people A and B of the test below to annot/valid.json; returns A's predictions (16, 2)."""
    joints_a = {j: (101.0 + 10 * j, 151.0) for j in MEAN_ORDER}
    joints_a[8], joints_a[9] = (101.0, 101.0), (101.0, 51.0)
    joints_b = {j: (50.0, 50.0) for j in MEAN_ORDER if j != 9}
    (tmp_path / "annot").mkdir()
    people = [_person("a.jpg", (100, 100), 1.0, joints_a), _person("a.jpg", (50, 50), 1.0, joints_b)]
    (tmp_path / "annot" / "valid.json").write_text(json.dumps(people))
    pred_a = np.zeros((16, 2))
    for j, (x, y) in joints_a.items():
        pred_a[j] = (x - 1.0, y - 1.0)
    pred_a[1, 0] += 24.0  # r_knee: hit (bound 25 px)
    pred_a[4, 1] += 26.0  # l_knee: miss
    return pred_a


def test_pckh_fallback_is_flagged_and_uses_the_head_segment(tmp_path):
    # Person A: upper_neck (101, 101), head_top (101, 51) -> head segment 50 px = the head size; the
    # bound at 0.5 is 25 px. Its 14 mean joints are visible (json coords are 1-based).
    # Predictions (0-based): exact, except r_knee off by 24 (hit) and l_knee off by 26 (miss) -> 13/14.
    # (0.6 x sqrt(2) x 50 = 42.4, a square head box's rule, would make both misses: 12/14.)
    # Person B lacks head_top: no head size, left out (counted in people_without_head_size).
    preds = np.zeros((2, 16, 2))
    preds[0] = _fallback_people(tmp_path)
    with pytest.warns(UserWarning, match="not found"):
        result = evaluate_mpii(preds, tmp_path, "valid")
    assert result["head_size_source"] == SOURCE_FALLBACK
    assert result["people_without_head_size"] == 1
    assert result["Mean"] == pytest.approx(100.0 * 13 / 14)
    assert result["Knee"] == pytest.approx(50.0)



# ---------------------------------------------------------------- loader conventions
# One 200x200 image, one person: json centre (101, 85.5) 1-based, scale 0.5.
# Centre: y + 15 * 0.5 = 93 -> 0-based (100, 92). Box side 0.5 * 200 = 100 px, x 1.25 -> crop 125 x 125.
# Input 250 x 250 is 2 input px per image px, the crop centre is (124.5, 124.5).
# r_ankle at json (126, 93) -> 0-based (125, 92) -> input (124.5 + 2 * 25, 124.5) = (174.5, 124.5)
# -> heatmap (125 x 125, half the input): (174.5 + 0.5) / 2 - 0.5 = 87, (124.5 + 0.5) / 2 - 0.5 = 62.
def _loader_root(tmp_path: Path) -> Path:
    root = tmp_path / "mpii"
    (root / "annot").mkdir(parents=True)
    (root / "images").mkdir()
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    image[91:94, 124:127] = 255  # a 3x3 white square centred on the 0-based joint (125, 92)
    cv2.imwrite(str(root / "images" / "000000001.jpg"), image)
    people = [_person("000000001.jpg", (101.0, 85.5), 0.5, {0: (126.0, 93.0)})]
    for split in ("train", "valid"):
        (root / "annot" / f"{split}.json").write_text(json.dumps(people))
    return root


def test_loader_center_scale_maps_joint_to_expected_crop_position(tmp_path):
    data = MpiiTopDown(_loader_root(tmp_path), "valid", input_size=(250, 250), heatmap_size=(125, 125))
    sample = data[0]
    np.testing.assert_allclose(sample["meta"]["center"], [100.0, 92.0])
    np.testing.assert_allclose(sample["meta"]["scale"], [125.0, 125.0])
    target = sample["target"].numpy()
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (62, 87)
    assert target[0, 62, 87] == pytest.approx(1.0)
    assert sample["target_weight"][:, 0].tolist() == [1.0] + [0.0] * 15
    brightness = sample["image"].numpy().mean(axis=0)  # (H, W), the white square on black
    weights = np.clip(brightness - brightness.min() - 0.5, 0, None)
    ys, xs = np.mgrid[:250, :250]
    centroid = ((weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum())
    assert centroid == pytest.approx((174.5, 124.5), abs=0.3)


def test_center_scale_aspect_ratio_and_zero_based():
    # Non-square input 256 x 192 (W / H = 0.75): the 125-px padded square becomes 125 x 166.67.
    center, scale = mpii_center_scale(np.array([101.0, 85.5]), 0.5, 0.75)
    np.testing.assert_allclose(center, [100.0, 92.0])
    np.testing.assert_allclose(scale, [125.0, 125.0 / 0.75], rtol=1e-6)
    center, _ = mpii_center_scale(np.array([101.0, 85.5]), 0.5, 1.0, one_based=False)
    np.testing.assert_allclose(center, [101.0, 93.0])


def test_flip_pairs_swap_left_and_right():
    paired = set()
    for a, b in MPII_FLIP_PAIRS:
        assert {MPII_JOINTS[a][:2], MPII_JOINTS[b][:2]} == {"r_", "l_"}
        assert MPII_JOINTS[a][2:] == MPII_JOINTS[b][2:]
        paired |= {a, b}
    assert paired == {j for j, name in enumerate(MPII_JOINTS) if name[:2] in ("r_", "l_")}
    keypoints = np.zeros((16, 3), dtype=np.float32)
    keypoints[0] = (10.0, 20.0, 1.0)  # r_ankle
    flipped = flip_keypoints(keypoints, 200, MPII_FLIP_PAIRS)
    assert flipped[5].tolist() == [189.0, 20.0, 1.0] and flipped[0, 2] == 0.0


def test_train_flip_moves_right_ankle_into_left_slot(tmp_path):
    # Flipping the 200-px image: joint x 125 -> 199 - 125 = 74 and centre x 100 -> 99, so the joint
    # lands at input x 124.5 + 2 * (74 - 99) = 74.5 -> heatmap x (74.5 + 0.5) / 2 - 0.5 = 37, in slot 5.
    data = MpiiTopDown(_loader_root(tmp_path), "train", input_size=(250, 250), heatmap_size=(125, 125),
                       train=True, flip_prob=1.0, scale_factor=0.0, rot_prob=0.0)
    torch.manual_seed(0)
    sample = data[0]
    target = sample["target"].numpy()
    assert sample["target_weight"][0, 0] == 0.0 and sample["target_weight"][5, 0] == 1.0
    assert np.unravel_index(target[5].argmax(), target[5].shape) == (62, 37)
    np.testing.assert_allclose(sample["meta"]["center"], [99.0, 92.0])


def test_mpii_config_builds_pose_data(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "mpii.yaml")
    cfg.root = str(_loader_root(tmp_path))
    data = instantiate(cfg)
    assert (data.name, data.num_keypoints, data.input_size, data.heatmap_size) == ("mpii", 16, (256, 256),
                                                                                  (64, 64))
    assert data.train.train and not data.val.train and len(data.val) == 1
    assert tuple(data.val[0]["image"].shape) == (3, 256, 256)


# ---------------------------------------------------------------- the dataset's metric hook
def _fallback_example(tmp_path: Path) -> tuple[MpiiTopDown, np.ndarray]:
    """The people of the fallback test above as a dataset, and person A's predictions (13/14 hits)."""
    pred_a = _fallback_people(tmp_path)
    return MpiiTopDown(tmp_path, "valid"), pred_a


def _entry(index: int, joints: np.ndarray, score: float = 1.0) -> dict:
    keypoints = np.concatenate([joints, np.ones((16, 1))], axis=1).reshape(-1)
    return {"image_id": 0, "category_id": 1, "keypoints": keypoints.tolist(), "score": score,
            "index": index}


def test_dataset_evaluate_aligns_results_by_index_and_reports_pckh(tmp_path):
    data, pred_a = _fallback_example(tmp_path)
    assert data.primary_metric == "PCKh"
    far = np.full((16, 2), 1000.0)
    # out of order, and a lower-scored duplicate for person A that must lose to the real one
    results = [_entry(1, far), _entry(0, far, score=0.1), _entry(0, pred_a, score=0.9)]
    with pytest.warns(UserWarning, match="not found"):
        scores = data.evaluate(results, out_dir=tmp_path / "out")
    assert scores["PCKh"] == pytest.approx(100.0 * 13 / 14) == scores["Mean"]
    assert scores["Knee"] == pytest.approx(50.0)
    assert scores["people_without_head_size"] == 1.0
    assert all(isinstance(v, float) for v in scores.values())
    assert data.head_size_source == SOURCE_FALLBACK
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 3


def test_dataset_evaluate_counts_a_person_without_prediction_as_missed(tmp_path):
    data, _ = _fallback_example(tmp_path)
    with pytest.warns(UserWarning, match="not found"):
        scores = data.evaluate([_entry(1, np.zeros((16, 2)))])
    assert scores["PCKh"] == 0.0
    with pytest.raises(ValueError, match="index 5 is outside the 2 samples"):
        data.evaluate([_entry(5, np.zeros((16, 2)))])
