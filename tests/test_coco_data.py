"""The top-down COCO loader, on the real coco_mini sample (real_data), on the project's synthetic set
(`coco_set` runs a test on both) and on small hand-made folders."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nas.data.coco import IMAGENET_MEAN, IMAGENET_STD, CocoTopDown, UnreadableImageError
from nas.data.keypoints import coco_category
from nas.pose.decode import get_max_preds, refine_quarter_offset
from nas.pose.flip import flip_heatmaps_back
from tests.conftest import CocoSet


def test_filtering_keeps_12_of_14(coco_mini_root):
    data = CocoTopDown(coco_mini_root, "val2017")
    assert len(data.coco.getAnnIds()) == 14
    assert len(data) == 12
    assert data.dropped == {"iscrowd": 0, "degenerate_box": 0, "no_keypoints": 2}
    assert data.num_keypoints == 17 and len(data.sigmas) == 17 and len(data.flip_pairs) == 8
    assert data.image_dir == coco_mini_root / "val2017"
    assert len(CocoTopDown(coco_mini_root, "val2017", max_samples=5)) == 5


def test_center_scale_of_a_real_box(coco_mini_root):
    # image 785 (640x425), bbox [280.79, 44.73, 218.7, 346.68], clipped as HRNet does:
    # x2 = 280.79 + 217.7 = 498.49, y2 = 44.73 + 345.68 = 390.41 -> box w 217.7, h 345.68;
    # centre (389.64, 217.57); 217.7 < 0.75 * 345.68 = 259.26 -> (259.26, 345.68) * 1.25
    record = CocoTopDown(coco_mini_root, "val2017").samples[0]
    assert record.image_id == 785 and record.ann_id == 442619
    np.testing.assert_allclose(record.center, [389.64, 217.57], atol=1e-3)
    np.testing.assert_allclose(record.scale, [324.075, 432.1], atol=1e-2)


def _filtering_copy(tmp_path: Path, synthetic_coco: CocoSet) -> tuple[Path, int]:
    """The synthetic val annotations with one crowd person, one without keypoints and one with an empty
    box; the images linked. Returns the root and the number of annotations."""
    doc = json.loads(synthetic_coco.ann_file.read_text())
    anns = doc["annotations"]
    assert len(anns) >= 6 and all(a["num_keypoints"] > 0 and not a["iscrowd"] for a in anns)
    anns[1]["iscrowd"] = 1
    anns[3]["num_keypoints"], anns[3]["keypoints"] = 0, [0] * 51
    anns[5]["bbox"] = [10.0, 10.0, 0.0, 20.0]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_val.json").write_text(json.dumps(doc))
    (tmp_path / "val").symlink_to(synthetic_coco.image_dir)
    return tmp_path, len(anns)


def test_filtering_drops_crowds_empty_boxes_and_unlabelled_people(tmp_path, synthetic_coco):
    root, count = _filtering_copy(tmp_path, synthetic_coco)
    data = CocoTopDown(root, "val")
    assert len(data.coco.getAnnIds()) == count and len(data) == count - 3
    assert data.dropped == {"iscrowd": 1, "degenerate_box": 1, "no_keypoints": 1}
    assert data.num_keypoints == 17 and len(data.sigmas) == 17 and len(data.flip_pairs) == 8
    assert data.image_dir == root / "val"


def test_center_scale_of_a_synthetic_box(synthetic_coco):
    # HRNet's rule by hand: clip [x, y, w, h] to x1 = max(0, x), x2 = min(W - 1, x1 + w - 1) (same in y),
    # centre = box middle, grow the short side to aspect 192/256 = 0.75, times padding 1.25
    doc = json.loads(synthetic_coco.ann_file.read_text())
    ann = doc["annotations"][0]
    info = next(i for i in doc["images"] if i["id"] == ann["image_id"])
    x, y, w, h = ann["bbox"]
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(info["width"] - 1.0, x1 + w - 1.0), min(info["height"] - 1.0, y1 + h - 1.0)
    bw, bh = x2 - x1, y2 - y1
    size = (bw, bw / 0.75) if bw > 0.75 * bh else (bh * 0.75, bh)
    record = CocoTopDown(synthetic_coco.root, "val").samples[0]
    assert record.image_id == ann["image_id"] and record.ann_id == ann["id"]
    np.testing.assert_allclose(record.center, [x1 + bw / 2, y1 + bh / 2], atol=1e-3)
    np.testing.assert_allclose(record.scale, [1.25 * size[0], 1.25 * size[1]], rtol=1e-5)


def test_val_sample_shapes_and_types(coco_set: CocoSet):
    data = CocoTopDown(coco_set.root, coco_set.split)
    sample = data[3]
    assert sample["image"].shape == (3, 256, 192) and sample["image"].dtype == torch.float32
    assert sample["target"].shape == (17, 64, 48) and sample["target"].dtype == torch.float32
    assert sample["target_weight"].shape == (17, 1) and sample["target_weight"].dtype == torch.float32
    meta = sample["meta"]
    assert isinstance(meta["image_id"], int) and isinstance(meta["index"], int) and meta["index"] == 3
    assert meta["center"].dtype == np.float32 and meta["center"].shape == (2,)
    assert meta["scale"].dtype == np.float32 and meta["scale"].shape == (2,)
    assert meta["score"] == 1.0
    # every labelled joint lies inside its padded box crop
    visible = data.samples[3].keypoints[:, 2] > 0
    assert sample["target_weight"][:, 0].numpy().tolist() == visible.astype(float).tolist()
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 256, 192) and batch["meta"]["center"].shape == (4, 2)


def test_crop_pixel_matches_bilinear_sample_of_the_image(coco_set: CocoSet):
    data = CocoTopDown(coco_set.root, coco_set.split)
    record, sample = data.samples[0], data[0]
    rgb = np.asarray(Image.open(record.image_path).convert("RGB"), dtype=np.float64)  # independent reader
    row, col = 120, 80  # near the crop centre: inside the (clipped) box, so inside the image
    x = (col - 95.5) * record.scale[0] / 192 + record.center[0]
    y = (row - 127.5) * record.scale[1] / 256 + record.center[1]
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    expected = ((1 - fy) * ((1 - fx) * rgb[y0, x0] + fx * rgb[y0, x0 + 1])
                + fy * ((1 - fx) * rgb[y0 + 1, x0] + fx * rgb[y0 + 1, x0 + 1]))
    pixel = sample["image"][:, row, col].numpy() * IMAGENET_STD + IMAGENET_MEAN
    np.testing.assert_allclose(pixel * 255.0, expected, atol=2.0)  # cv2 rounds to uint8, 1/32 px


def test_training_samples_are_valid_and_seeded(coco_set: CocoSet):
    data = CocoTopDown(coco_set.root, coco_set.split, train=True, rot_prob=1.0)
    for index in range(len(data)):
        sample = data[index]
        assert sample["image"].shape == (3, 256, 192) and torch.isfinite(sample["image"]).all()
        target, weight = sample["target"], sample["target_weight"][:, 0]
        assert set(weight.tolist()) <= {0.0, 1.0}
        assert target.min() >= 0 and target.max() <= 1
        assert not target[weight == 0].any()
    torch.manual_seed(3)
    first = data[0]
    torch.manual_seed(3)
    again = data[0]
    torch.manual_seed(4)
    other = data[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["target"], again["target"])
    assert not torch.equal(first["image"], other["image"])


def test_flip_augmentation_mirrors_the_val_sample(coco_set: CocoSet):
    val = CocoTopDown(coco_set.root, coco_set.split)
    flipped = CocoTopDown(coco_set.root, coco_set.split, train=True, scale_factor=0.0, rot_prob=0.0,
                          flip_prob=1.0)
    for index in (0, 7):
        a, b = val[index], flipped[index]
        # the mirrored crop, its targets flipped back with left/right swapped, equal the val ones
        back = flip_heatmaps_back(b["target"][None], val.flip_pairs)[0]
        np.testing.assert_allclose(back.numpy(), a["target"].numpy(), atol=1e-5)
        assert (a["image"].flip(-1) - b["image"]).abs().max() < 0.03  # about one grey level


def _joints_in_crop(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """All joints' positions (K, 2) relative to the crop centre in input pixels, read from the target
    (within 1 px per axis), and which of them have a target (K,)."""
    target = sample["target"][None].numpy()
    coords = refine_quarter_offset(target, get_max_preds(target)[0])[0]  # (K, 2) heatmap px
    return (coords + 0.5) * 4.0 - 0.5 - np.array([95.5, 127.5]), sample["target_weight"][:, 0].numpy() > 0


def test_rotation_augmentation_turns_joints_about_the_crop_centre(coco_set: CocoSet):
    val = CocoTopDown(coco_set.root, coco_set.split)
    rotated = CocoTopDown(coco_set.root, coco_set.split, train=True, scale_factor=0.0, rot_prob=1.0,
                          flip_prob=0.0)
    angles = []
    for seed in range(3):
        torch.manual_seed(seed)
        (turned, keep_turned), (straight, keep) = _joints_in_crop(rotated[0]), _joints_in_crop(val[0])
        turned, straight = turned[keep & keep_turned], straight[keep & keep_turned]
        # a rotation keeps the distances to the centre (each position is within 1 px per axis)
        np.testing.assert_allclose(np.hypot(*turned.T), np.hypot(*straight.T), atol=3.0)
        far = np.hypot(*straight.T) > 40  # angles are well defined away from the centre
        turn = np.angle(np.exp(1j * (np.arctan2(turned[far, 1], turned[far, 0])
                                     - np.arctan2(straight[far, 1], straight[far, 0]))))
        assert np.ptp(turn) < 0.1  # every joint turned by the same angle
        angles.append(float(np.median(turn)))
    assert max(abs(a) for a in angles) > 0.1  # and the angle is not always zero


def _write_synthetic(root: Path, image_dir: Path, file_name: str = "a.jpg") -> None:
    """One 60x40 image with one annotated person, in the COCO format."""
    (root / "annotations").mkdir(parents=True)
    image_dir.mkdir(parents=True)
    keypoints = [0.0] * 51
    keypoints[0:3] = [20.0, 10.0, 2.0]
    ann = {"id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0, "bbox": [10, 5, 20, 30],
           "area": 600.0, "num_keypoints": 1, "keypoints": keypoints}
    dataset = {"images": [{"id": 5, "file_name": file_name, "width": 40, "height": 60}],
               "annotations": [ann], "categories": [coco_category()]}
    (root / "annotations" / "person_keypoints_val.json").write_text(json.dumps(dataset))


def test_images_subfolder_layout(tmp_path):
    _write_synthetic(tmp_path, tmp_path / "images" / "val")
    cv2.imwrite(str(tmp_path / "images" / "val" / "a.jpg"), np.full((60, 40, 3), 128, np.uint8))
    data = CocoTopDown(tmp_path, "val", input_size=(64, 48), heatmap_size=(16, 12))
    sample = data[0]
    assert data.image_dir == tmp_path / "images" / "val"
    assert sample["image"].shape == (3, 64, 48) and sample["target_weight"][0, 0] == 1.0


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="person_keypoints_val.json"):
        CocoTopDown(tmp_path, "val")
    _write_synthetic(tmp_path, tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="images"):
        CocoTopDown(tmp_path, "val")


def test_unreadable_image_names_the_file(tmp_path):
    _write_synthetic(tmp_path, tmp_path / "val")
    (tmp_path / "val" / "a.jpg").write_bytes(b"not a jpeg")
    data = CocoTopDown(tmp_path, "val")
    with pytest.raises(UnreadableImageError, match="a.jpg"):
        data[0]


def test_coco_data_builds_only_the_asked_splits(tmp_path, synthetic_coco):
    from nas.data.build import coco_data
    from nas.errors import UserError
    (tmp_path / "annotations").mkdir()  # val annotations only, as in a first download
    (tmp_path / "annotations" / "person_keypoints_val.json").symlink_to(synthetic_coco.ann_file)
    (tmp_path / "val").symlink_to(synthetic_coco.image_dir)
    data = coco_data(str(tmp_path), train_split="train", val_split="val", splits=["val"])
    assert data.train is None and len(data.val) > 0 and data.num_keypoints == 17
    with pytest.raises(UserError, match="person_keypoints_train.json"):  # asked for: the user's to fix
        coco_data(str(tmp_path), train_split="train", val_split="val")
    with pytest.raises(UserError, match="splits"):
        coco_data(str(tmp_path), train_split="train", val_split="val", splits=["test"])
