"""python -m nas.data, the dataset inspector: run as a user runs it (a real process) on real or tiny data,
and in-process (the same config composition) on the project's synthetic COCO-format set."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nas.errors import UserError
from tests.conftest import CocoSet
from tests.helpers import REPO_ROOT, module_cmd, run_env

COCO_SPLITS = ["data=coco", "data.train_split=val2017", "data.val_split=val2017", "num_workers=0"]
TINY_SYNTHETIC = ["data.num_train=10", "data.num_val=4", "data.image_size=[128,128]", "data.max_people=2",
                  "num_workers=0"]


def _inspect(cache: Path, out_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(module_cmd("nas.data", *args, f"out_dir={out_dir}"), capture_output=True,
                          text=True, timeout=120, env=run_env(cache), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out_dir / "summary.json").read_text())


def _inspect_here(out_dir: Path, *overrides: str) -> dict:
    """The inspector in this process, on the config `python -m nas.data <overrides>` would compose."""
    from hydra import compose, initialize_config_module

    from nas.data.inspect import inspect_data
    from nas.inspect_config import register
    register()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("inspect", overrides=[*overrides, "num_workers=0", f"out_dir={out_dir}"])
    return inspect_data(cfg)


def _val_only_download(tmp_path: Path, synthetic_coco: CocoSet) -> Path:
    """A COCO 2017 layout holding only the val annotations and images (the synthetic val split)."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(synthetic_coco.ann_file, root / "annotations" / "person_keypoints_val2017.json")
    (root / "val2017").symlink_to(synthetic_coco.image_dir)
    return root


def test_val_only_download_inspects_val_and_names_missing_train(tmp_path, synthetic_coco):
    """The first thing a user downloads: only person_keypoints_val2017.json. No split asked: the splits
    that exist are inspected and the missing one named; exit status 0."""
    root = _val_only_download(tmp_path, synthetic_coco)
    proc, summary = _inspect(tmp_path / "cache", tmp_path / "out", "data=coco", f"data.root={root}",
                             "num_workers=0", "num_images=0")
    assert [s["split"] for s in summary["splits"]] == ["val"]
    assert summary["splits"][0]["instances_loaded"] > 0
    assert list(summary["missing_splits"]) == ["train"]
    assert "person_keypoints_train2017.json" in summary["missing_splits"]["train"]
    assert "[train] missing" in proc.stdout


def test_only_the_asked_split_is_built(tmp_path, synthetic_coco):
    root = _val_only_download(tmp_path, synthetic_coco)
    summary = _inspect_here(tmp_path / "out", "data=coco", f"data.root={root}", "split=val", "num_images=0")
    assert [s["split"] for s in summary["splits"]] == ["val"] and summary["missing_splits"] == {}
    with pytest.raises(UserError, match="person_keypoints_train2017.json"):  # asked for, so an error
        _inspect_here(tmp_path / "out", "data=coco", f"data.root={root}", "split=train")
    (root / "annotations" / "person_keypoints_val2017.json").unlink()
    with pytest.raises(UserError, match="no split found"):
        _inspect_here(tmp_path / "out", "data=coco", f"data.root={root}")


def test_synthetic_counts_round_trip_and_pictures(tmp_path, synthetic_coco):
    """The twin of the coco_mini test below: counts read from the annotation file itself."""
    doc = json.loads(synthetic_coco.ann_file.read_text())
    people = [a for a in doc["annotations"] if a["num_keypoints"] > 0]
    summary = _inspect_here(tmp_path / "out", "data=coco", f"data.root={synthetic_coco.root}",
                            "data.train_split=val", "data.val_split=val", "split=val", "num_images=3")
    (val,) = summary["splits"]
    assert val["images_in_annotations"] == len(doc["images"])
    assert val["images_loaded"] == len({a["image_id"] for a in people})
    assert val["instances_kept"] == val["instances_loaded"] == len(people)
    assert val["dropped"] == {"iscrowd": 0, "degenerate_box": 0, "no_keypoints": 0}
    assert val["unreadable_images"] == 0 and val["primary_metric"] == "AP"
    assert val["round_trip"]["quarter"] >= 0.9 and val["round_trip"]["dark"] >= 0.9
    assert val["round_trip_error_px"]["dark"] < val["round_trip_error_px"]["quarter"]
    assert len(list((tmp_path / "out").glob("val_*.png"))) == 3


def test_synthetic_corrupt_image_is_counted_and_named(tmp_path, synthetic_coco):
    """The twin of the coco_mini corrupt-image test: one unreadable image, its people counted, not fatal."""
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco.root, root)
    doc = json.loads(synthetic_coco.ann_file.read_text())
    bad_id = doc["annotations"][0]["image_id"]
    bad = root / "val" / next(i["file_name"] for i in doc["images"] if i["id"] == bad_id)
    bad.write_bytes(b"not a jpeg at all")
    on_bad = sum(a["image_id"] == bad_id for a in doc["annotations"])
    summary = _inspect_here(tmp_path / "out", "data=coco", f"data.root={root}", "data.train_split=val",
                            "data.val_split=val", "split=both", "augment=true", "num_images=0")
    train, val = summary["splits"]
    assert val["unreadable_images"] == 1 and val["unreadable_instances"] == on_bad
    assert val["unreadable_paths"] == [str(bad)]
    assert val["instances_loaded"] == len(doc["annotations"]) - on_bad
    assert train["unreadable_paths"] == [str(bad)] and train["unreadable_instances"] == on_bad
    assert train["instances_loaded"] == len(doc["annotations"]) and train["round_trip"] is None


def test_coco_mini_counts_round_trip_and_pictures(coco_mini_root, tmp_path):
    proc, summary = _inspect(tmp_path / "cache", tmp_path / "out", *COCO_SPLITS,
                             f"data.root={coco_mini_root}", "split=val")
    (val,) = summary["splits"]
    assert val["split"] == "val"
    # the annotation file: 4 images with 1, 3, 5 and 5 people, two of them with num_keypoints == 0
    assert val["images_loaded"] == 4 and val["images_in_annotations"] == 4
    assert val["instances_kept"] == 12 and val["instances_loaded"] == 12
    assert val["dropped"] == {"iscrowd": 0, "degenerate_box": 0, "no_keypoints": 2}
    assert val["unreadable_images"] == 0 and val["unreadable_paths"] == []
    assert val["primary_metric"] == "AP"
    assert val["round_trip"]["quarter"] >= 0.9 and val["round_trip"]["dark"] >= 0.9
    # quarter offset: up to a quarter heatmap pixel per axis (~1 image px here); DARK is near exact
    errors = val["round_trip_error_px"]
    assert errors["dark"] < 0.25 < errors["quarter"]
    assert val["samples_per_s"] > 0 and val["wall_s"] > 0
    pngs = sorted((tmp_path / "out").glob("val_*.png"))
    assert len(pngs) == 8 and all(p.stat().st_size > 1000 for p in pngs)
    assert "instances kept  12" in proc.stdout and "no_keypoints 2" in proc.stdout
    assert "round-trip AP" in proc.stdout and "dark" in proc.stdout and "samples/s" in proc.stdout


def test_synthetic_tiny_round_trip(tmp_path):
    proc, summary = _inspect(tmp_path / "cache", tmp_path / "out", *TINY_SYNTHETIC, "split=both",
                             "num_images=2")
    assert [s["split"] for s in summary["splits"]] == ["train", "val"]
    for split in summary["splits"]:
        assert split["instances_loaded"] == split["instances_kept"] > 0
        assert split["round_trip"]["quarter"] >= 0.9 and split["round_trip"]["dark"] >= 0.9
        assert split["images_written"] == 2
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_corrupt_image_is_counted_and_named(coco_mini_root, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(coco_mini_root, root)
    bad = root / "val2017" / "000000040083.jpg"  # holds 2 of the 12 kept people (3rd has no keypoints)
    bad.write_bytes(b"not a jpeg at all")
    proc, summary = _inspect(tmp_path / "cache", tmp_path / "out", *COCO_SPLITS, f"data.root={root}",
                             "num_images=0", "split=both", "augment=true")
    train, val = summary["splits"]
    # val: the failing samples are caught and left out
    assert val["unreadable_images"] == 1 and val["unreadable_instances"] == 2
    assert val["unreadable_paths"] == [str(bad)]
    assert val["instances_loaded"] == 10 and val["images_loaded"] == 3
    # train, augmented: the dataset itself replaces each failing sample by the next readable one
    assert train["unreadable_images"] == 1 and train["unreadable_instances"] == 2
    assert train["unreadable_paths"] == [str(bad)] and train["instances_loaded"] == 12
    assert train["round_trip"] is None and "round-trip      skipped" in proc.stdout
    assert str(bad) in proc.stdout
    assert not list((tmp_path / "out").glob("*.png"))


def test_bad_split_is_a_user_error(tmp_path):
    proc = subprocess.run(module_cmd("nas.data", "split=test", f"out_dir={tmp_path / 'out'}"),
                          capture_output=True, text=True, timeout=120, env=run_env(tmp_path / "cache"),
                          cwd=REPO_ROOT)
    assert proc.returncode == 2 and "split must be one of" in proc.stderr


def test_mpii_round_trip_scores_pckh(tmp_path):
    # One 200x200 image, one person with all 16 joints labelled (1-based json coords) inside the crop
    # (centre (101, 101), scale 0.8 -> a 160 px box, 200 px crop). No gt_valid.mat: head size is the
    # head_top-upper_neck segment, 30 px, so PCKh@0.5 allows 15 px; GT decoded back is within ~1 px.
    import cv2
    import numpy as np
    root = tmp_path / "mpii"
    (root / "annot").mkdir(parents=True)
    (root / "images").mkdir()
    cv2.imwrite(str(root / "images" / "000000001.jpg"), np.full((200, 200, 3), 90, np.uint8))
    joints = [[61.0 + 5.3 * j, 61.0 + 7.7 * (j % 9)] for j in range(16)]
    joints[8], joints[9] = [101.0, 71.0], [101.0, 41.0]
    person = {"image": "000000001.jpg", "center": [101.0, 101.0], "scale": 0.8, "joints": joints,
              "joints_vis": [1] * 16}
    for split in ("train", "valid"):
        (root / "annot" / f"{split}.json").write_text(json.dumps([person]))
    proc, summary = _inspect(tmp_path / "cache", tmp_path / "out", "data=mpii", f"data.root={root}",
                             "num_workers=0", "num_images=1", "split=val")
    (val,) = summary["splits"]
    assert val["primary_metric"] == "PCKh" and val["instances_loaded"] == 1
    assert val["round_trip"] == {"quarter": pytest.approx(100.0), "dark": pytest.approx(100.0),
                                 "soft_argmax": pytest.approx(100.0)}
    assert val["images_written"] == 1 and "round-trip PCKh" in proc.stdout
