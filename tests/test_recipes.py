"""The published training recipes as presets (+recipe=...): their settings, and one run of the COCO one."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nas.config import register
from tests.helpers import module_cmd, run_env

REPO_ROOT = Path(__file__).resolve().parents[1]

# (recipe, {dotted key: the published value}) -- from the papers' / repositories' training settings
PUBLISHED = {
    "coco_topdown_210e": {  # HRNet (Sun et al. 2019) sec. 4.1 and MMPose's configs
        "epochs": 210, "optimizer.lr": 1e-3, "lr_schedule": "multistep", "lr_steps": [170, 200],
        "lr_factor": 0.1, "batch_size": 32, "input_size": [256, 192], "heatmap_size": [64, 48],
        "data.sigma": 2.0, "data.use_gt_bbox": False, "data.augment.scale_factor": 0.35,
        "data.augment.rot_factor": 45.0, "data.augment.half_body_prob": 0.3, "flip_test": True,
        "warmup_iters": 500, "warmup_ratio": 0.001},
    "coco_topdown_384x288_210e": {"input_size": [384, 288], "heatmap_size": [96, 72], "data.sigma": 3.0,
                                  "epochs": 210, "lr_steps": [170, 200]},
    "mpii_topdown_210e": {"input_size": [256, 256], "heatmap_size": [64, 64], "data.augment.scale_factor": 0.25,
                          "data.augment.rot_factor": 30.0, "epochs": 210, "lr_steps": [170, 200]},
    "mspn_coco_210e": {"optimizer.lr": 5e-3, "epochs": 210, "lr_steps": [170, 200]},  # MMPose's MSPN
    "lpn_coco_150e": {  # zhang943/lpn-pytorch experiments/coco/lpn/lpn50_256x192_gd256x2_gc.yaml
        "epochs": 150, "optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4, "lr_steps": [90, 120],
        "data.augment.scale_factor": 0.3, "data.augment.rot_factor": 40.0, "decode": "soft_argmax",
        "warmup_iters": 0},
}


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_a_recipe_sets_the_published_values(recipe):
    register()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("retrain", overrides=["genotype=g.json", f"+recipe={recipe}", "data.root=/data"])
    for key, value in PUBLISHED[recipe].items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key


def test_the_recipes_in_conf_are_the_ones_checked():
    assert sorted(p.stem for p in (REPO_ROOT / "conf" / "recipe").glob("*.yaml")) == sorted(PUBLISHED)


@pytest.mark.slow
def test_the_coco_recipe_trains_and_evaluates_on_detector_boxes(tmp_path, coco_mini_root):
    """The recipe as a GPU user runs it, on the four real COCO images (their val split standing in for
    train), two steps: the multistep schedule and warm-up run, and evaluation uses the detector's boxes."""
    genotype = REPO_ROOT / "genotypes" / "weak_plain_conv.json"
    proc = subprocess.run(module_cmd("nas.retrain", str(genotype), "+recipe=coco_topdown_210e",
                                     f"data.root={coco_mini_root}", "data.train_split=val2017", "epochs=1",
                                     "max_steps_per_epoch=2", "batch_size=4", "eval_every=1", "num_workers=0",
                                     f"run_dir={tmp_path / 'r'}"),
                          env=run_env(tmp_path / "cache"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    boxes = json.loads((coco_mini_root / "person_detection_results"
                        / "COCO_val2017_detections_AP_H_56_person.json").read_text())
    preds = json.loads((tmp_path / "r" / "best_predictions.json").read_text())
    assert results["input_size"] == [256, 192]
    # one prediction per detector box of a person (before OKS-NMS drops some): never more than the boxes
    assert 0 < len(preds) <= sum(b["category_id"] == 1 for b in boxes)
