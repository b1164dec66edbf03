"""Bad input: unreadable training images are skipped, counted and reported; the rest is one clear error."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nas.data.bad_images import BadImageMonitor
from nas.data.build import coco_data
from nas.data.coco import CocoTopDown, UnreadableImageError
from nas.data.mpii import MpiiTopDown
from nas.engine.runtime import make_loader
from nas.errors import UserError

WIDTH, HEIGHT = 100, 80


def _pose(i: int) -> np.ndarray:
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[:, 0] = 30 + 2 * np.arange(17) + i
    kp[:, 1] = 10 + 3 * np.arange(17)
    kp[:, 2] = 2
    return kp


def write_coco(tmp_path: Path, poses: list[np.ndarray], corrupt: tuple[int, ...] = (1,),
               missing: tuple[int, ...] = ()) -> Path:
    """A COCO-format root (train2017 = val2017), one 100 x 80 image per pose with that one person.
    Images in `corrupt` hold garbage bytes; those in `missing` are not written."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    images, anns = [], []
    for i, kp in enumerate(poses):
        name = f"{i + 1:012d}.jpg"
        images.append({"id": i + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
        xy = kp[kp[:, 2] > 0, :2]
        x0, y0 = xy.min(axis=0) - 2
        w, h = xy.max(axis=0) - xy.min(axis=0) + 4
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h),
                     "keypoints": [float(v) for v in kp.reshape(-1)],
                     "num_keypoints": int((kp[:, 2] > 0).sum())})
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        for i, info in enumerate(images):
            path = root / split / info["file_name"]
            if i in missing:
                continue
            if i in corrupt:
                path.write_bytes(b"this is not a jpeg" * 10)
            else:
                cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 3), 40 * i, dtype=np.uint8))
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns,
             "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}))
    return root


def _train_set(root: Path) -> CocoTopDown:
    return CocoTopDown(root, "train2017", input_size=(64, 48), heatmap_size=(16, 12), train=True)


def test_train_sample_with_corrupt_image_is_replaced_by_the_next(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(3)], corrupt=(1,))
    ds = _train_set(root)
    assert ds[0]["meta"]["skipped"] == "" and ds[0]["meta"]["index"] == 0
    sample = ds[1]
    assert sample["meta"]["skipped"] == str(root / "train2017" / "000000000002.jpg")
    assert sample["meta"]["index"] == 2 and sample["meta"]["image_id"] == 3  # the next sample's


def test_last_sample_wraps_to_the_first_and_missing_files_count_too(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(3)], corrupt=(), missing=(2,))
    sample = _train_set(root)[2]
    assert sample["meta"]["index"] == 0
    assert sample["meta"]["skipped"].endswith("000000000003.jpg")


def test_no_readable_image_at_all_is_a_user_error(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(2)], corrupt=(0, 1))
    with pytest.raises(UserError, match="none of the 2 training images can be read"):
        _train_set(root)[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_training_epoch_counts_and_reports_the_skipped_file(tmp_path, workers, caplog):
    """4 samples, image 2 corrupt: one skip per epoch, seen in the main process even from a worker."""
    root = write_coco(tmp_path, [_pose(i) for i in range(4)], corrupt=(1,))
    loader = make_loader(_train_set(root), 2, True, workers)
    monitor = BadImageMonitor(4, max_bad_fraction=0.25)  # 1 of 4 allowed
    for _ in range(2):
        monitor.start_epoch()
        for batch in loader:
            monitor.update(batch["meta"])
        bad = str(root / "train2017" / "000000000002.jpg")
        assert monitor.skipped == 1 and monitor.paths == {bad: 1}
        line = monitor.report()
        assert "skipped 1 training samples of 1 unreadable image(s)" in line and bad in line


def test_above_max_bad_fraction_aborts_with_one_line_naming_the_file(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(4)], corrupt=(1,))
    monitor = BadImageMonitor(4, max_bad_fraction=0.0)
    monitor.start_epoch()
    with pytest.raises(UserError) as err:
        for batch in make_loader(_train_set(root), 2, False, 0):
            monitor.update(batch["meta"])
    message = str(err.value)
    assert "\n" not in message and "000000000002.jpg" in message and "data.max_bad_fraction=0.0" in message


def test_trainer_aborts_a_run_above_the_fraction(tmp_path):
    from nas.engine.train_loop import Trainer
    from nas.pose.loss import KeypointMSELoss
    root = write_coco(tmp_path, [_pose(i) for i in range(4)], corrupt=(1,))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 17, 4, stride=4))  # (B, 17, 16, 12) heatmaps
    trainer = Trainer(model, KeypointMSELoss(), torch.optim.SGD(model.parameters(), lr=0.0), 1, 2,
                      torch.device("cpu"), bad_images=BadImageMonitor(4, 0.0))
    with pytest.raises(UserError, match="000000000002.jpg"):
        trainer.train_epoch(make_loader(_train_set(root), 2, False, 0))


def test_eval_mode_unreadable_image_is_an_error_naming_the_file(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(3)], corrupt=(1,))
    ds = CocoTopDown(root, "val2017", input_size=(64, 48), heatmap_size=(16, 12), train=False)
    assert "skipped" not in ds[0]["meta"]
    with pytest.raises(UnreadableImageError, match="000000000002.jpg"):
        ds[1]


def test_max_bad_fraction_is_wired_and_checked(tmp_path):
    root = write_coco(tmp_path, [_pose(i) for i in range(2)], corrupt=())
    assert coco_data(str(root), input_size=(64, 48), heatmap_size=(16, 12)).max_bad_fraction == 0.01
    assert coco_data(str(root), input_size=(64, 48), heatmap_size=(16, 12),
                     max_bad_fraction=0.5).max_bad_fraction == 0.5
    with pytest.raises(UserError, match="max_bad_fraction must be in"):
        coco_data(str(root), max_bad_fraction=1.5)


def test_missing_annotations_say_where_they_were_expected(tmp_path):
    root = write_coco(tmp_path, [_pose(0)], corrupt=())
    (root / "annotations" / "person_keypoints_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="expected .*person_keypoints_val2017.json"):
        CocoTopDown(root, "val2017")
    with pytest.raises(FileNotFoundError, match=r"expected .*annot.valid\.json"):
        MpiiTopDown(tmp_path, "valid")


def test_wrong_root_and_empty_split_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist; set data.root"):
        coco_data(str(tmp_path / "nowhere"))
    root = write_coco(tmp_path, [_pose(0)], corrupt=())
    ds = CocoTopDown(root, "val2017", max_samples=0)
    with pytest.raises(UserError, match="empty.*person_keypoints_val2017.json"):
        make_loader(ds, 2, False, 0)


def test_predictions_for_unknown_images_are_a_user_error(tmp_path):
    root = write_coco(tmp_path, [_pose(0)], corrupt=())
    ds = CocoTopDown(root, "val2017")
    entry = {"image_id": 99, "category_id": 1, "keypoints": [1.0] * 51, "score": 1.0, "index": 0}
    with pytest.raises(UserError, match=r"absent from the ground truth: \[99\]"):
        ds.evaluate([entry])
