"""Clips of PoseTrack tracks (nas.data.video_clips), the heatmap warp between crops, online boxes, the
posetrack data config and its inspector, on a tiny hand-written PoseTrack18 layout.

The fixture: images 64 x 48 (W x H); every person's box is [cx - 12, cy - 16, 24, 32], which is already of
the input's aspect 30 / 40, so with padding 1.25 the crop is 30 x 40 image pixels around (cx, cy): with
input (40, 30) one image pixel is one input pixel and x_in = x - cx + 14.5, y_in = y - cy + 19.5 (pixel
centres: the crop centre is at ((30 - 1) / 2, (40 - 1) / 2)). With heatmaps (20, 15), heatmap u = (x_in + 0.5)
/ 2 - 0.5 = (x - cx) / 2 + 7 and v = (y - cy) / 2 + 9.5, so a joint at an even dx and odd dy from the centre
sits on a heatmap pixel centre. Centres are half-integers, so every joint is at a half-integer image position,
drawn as a 2 x 2 pixel block (the left wrist white, the others grey).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from nas.data.build import build_splits
from nas.data.build_video import VideoData, posetrack_data, read_videos
from nas.data.posetrack import POSETRACK_KEYPOINTS
from nas.data.topdown import IMAGENET_MEAN, IMAGENET_STD, MissingSplitError, UnreadableImageError, read_rgb
from nas.data.video_clips import ClipDataset, box_from_keypoints, crop_image, warp_heatmaps
from nas.errors import UserError
from tests.helpers import REPO_ROOT, module_cmd, run_env

IMAGE_W, IMAGE_H = 64, 48
INPUT, HEATMAP, SIGMA = (40, 30), (20, 15), 1.0
# joint -> (dx, dy) from the box centre; the others (ears, elbows, knees) are unlabelled
OFFSETS = {0: (0, -11), 1: (0, -7), 2: (0, -15), 5: (4, -5), 6: (-4, -5), 9: (6, 3), 10: (-4, 1),
           11: (2, 5), 12: (-2, 5), 15: (2, 13), 16: (-2, 13)}
LEFT_WRIST, RIGHT_WRIST = 9, 10
COMMON = dict(input_size=INPUT, heatmap_size=HEATMAP, sigma=SIGMA)
FIXTURE_DATA = ["data=posetrack", "data.input_size=[40,30]", "data.heatmap_size=[20,15]", "data.sigma=1.0",
                "data.clip_length=2", "num_workers=0"]


def _uv(dx: float, dy: float) -> tuple[float, float]:
    """Heatmap pixel (u, v) of a joint at (dx, dy) from its box centre, unaugmented (module doc)."""
    return dx / 2 + 7, dy / 2 + 9.5


def _keypoints(cx: float, cy: float) -> list[float]:
    values = []
    for k in range(17):
        dx, dy = OFFSETS.get(k, (None, None))
        values += [cx + dx, cy + dy, 1] if k in OFFSETS else [0, 0, 0]
    return values


def _draw(image: np.ndarray, keypoints: list[float]) -> None:
    for k, (x, y, v) in enumerate(np.reshape(keypoints, (-1, 3))):
        if v > 0:  # (x, y) is a half-integer: the block of pixels x - 0.5, x + 0.5 is centred on it
            x0, y0 = int(x - 0.5), int(y - 0.5)
            image[y0:y0 + 2, x0:x0 + 2] = 255 if k == LEFT_WRIST else 90


def _write_video(root: Path, split: str, name: str, vid: int, labelled: list[bool],
                 people: dict[int, list[tuple]]) -> None:
    """One video file in the PoseTrack18 format with its jpgs. `people[frame]` lists (track_id, cx, cy)
    of people drawn and annotated there, or (track_id, bbox, keypoints) for a raw annotation."""
    images, annotations = [], []
    for frame, is_labeled in enumerate(labelled):
        image_id = 10000000000 + vid * 10000 + frame
        file_name = f"images/{split}/{name}/{frame:06d}.jpg"
        picture = np.zeros((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
        entry = {"has_no_densepose": True, "is_labeled": is_labeled, "file_name": file_name,
                 "nframes": len(labelled), "frame_id": image_id, "vid_id": f"{vid:06d}", "id": image_id}
        if frame == 0:
            entry.update(ignore_regions_x=[[1, 5, 5]], ignore_regions_y=[[1, 1, 5]])
        images.append(entry)
        for person in people.get(frame, []):
            if len(person) == 3 and not isinstance(person[1], list):
                track, cx, cy = person
                keypoints, bbox = _keypoints(cx, cy), [cx - 12, cy - 16, 24, 32]
                _draw(picture, keypoints)
            else:
                track, bbox, keypoints = person
            if is_labeled:
                annotations.append({"bbox_head": [0, 0, 4, 4], "keypoints": keypoints, "track_id": track,
                                    "image_id": image_id, "bbox": bbox, "scores": [], "category_id": 1,
                                    "id": image_id * 100 + len(annotations)})
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / file_name), picture, [cv2.IMWRITE_JPEG_QUALITY, 100])
    categories = [{"supercategory": "person", "id": 1, "name": "person", "keypoints": list(POSETRACK_KEYPOINTS),
                   "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13]]}]
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split / f"{name}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def _first_video(root: Path, split: str, name: str, vid: int) -> None:
    """6 labelled frames. Track 0 walks right (cx = 20.5 + 2t); track 1 stands at (46.5, 22.5) and is
    missing from frame 3, which splits its run into frames 0-2 and 4-5."""
    people = {t: [(0, 20.5 + 2 * t, 24.5)] + ([(1, 46.5, 22.5)] if t != 3 else []) for t in range(6)}
    _write_video(root, split, name, vid, [True] * 6, people)


@pytest.fixture
def posetrack_root(tmp_path) -> Path:
    """val: 000001_bonn (above) and 000002_mpii_test: 4 frames, frame 2 unlabelled; track 0 in frames 0, 1, 3
    (cx = 24.5 + 3t); frame 1 also holds track 5 with no labelled joint, frame 3 track 6 with a box of
    width 0. train: 000003_mpii_train, a copy of the first video's people."""
    root = tmp_path / "posetrack"
    _first_video(root, "val", "000001_bonn", 1)
    zero_box = [50.0, 10.0, 0.0, 20.0]
    one_joint = [52.0, 12.0, 1] + [0, 0, 0] * 16
    people = {0: [(0, 24.5, 24.5)], 1: [(0, 27.5, 24.5), (5, [40.0, 5.0, 10.0, 20.0], [0] * 51)],
              2: [(0, 30.5, 24.5)], 3: [(0, 33.5, 24.5), (6, zero_box, one_joint)]}
    _write_video(root, "val", "000002_mpii_test", 2, [True, True, False, True], people)
    _first_video(root, "train", "000003_mpii_train", 3)
    return root


def _frame_of(image_id: int) -> tuple[int, int]:
    """(vid, frame) of a fixture image id."""
    return (image_id - 10000000000) // 10000, image_id % 10000


def _clip_keys(dataset: ClipDataset) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(_frame_of(c.frames[0].image_id)[0], c.track_id, tuple(_frame_of(r.image_id)[1] for r in c.frames))
            for c in dataset.clips]


def _val(root: Path, **kwargs) -> ClipDataset:
    return posetrack_data(str(root), splits=["val"], **COMMON, **kwargs).val


def test_clips_are_windows_of_runs_of_labelled_frames_per_track(posetrack_root):
    two = _val(posetrack_root, clip_length=2)  # stride defaults to the length: no frame in two clips
    assert _clip_keys(two) == [(1, 0, (0, 1)), (1, 0, (2, 3)), (1, 0, (4, 5)),  # track 0: frames 0-5
                               (1, 1, (0, 1)), (1, 1, (4, 5)),  # track 1: runs 0-2 and 4-5 (frame 2 in none)
                               (2, 0, (0, 1))]  # frame 2 unlabelled: runs 0-1 and 3 (too short)
    assert two.dropped == {"no_track": 0, "no_keypoints": 1, "degenerate_box": 1, "duplicate_track": 0}
    three = _val(posetrack_root, clip_length=3, clip_stride=1)
    assert _clip_keys(three) == [(1, 0, (0, 1, 2)), (1, 0, (1, 2, 3)), (1, 0, (2, 3, 4)), (1, 0, (3, 4, 5)),
                                 (1, 1, (0, 1, 2))]
    spread = ClipDataset(read_videos(posetrack_root, "val"), clip_length=2, clip_stride=1, max_clips=3, **COMMON)
    # 9 clips (5 + 3 + 1), 3 kept evenly: indices 0, 3, 6
    assert _clip_keys(spread) == [(1, 0, (0, 1)), (1, 0, (3, 4)), (1, 1, (1, 2))]


def test_item_shapes_and_types_batch_with_the_default_collate(posetrack_root):
    dataset = _val(posetrack_root, clip_length=3)
    item = dataset[0]
    assert item["images"].shape == (3, 3, 40, 30) and item["images"].dtype == torch.float32
    assert item["targets"].shape == (3, 17, 20, 15) and item["target_weights"].shape == (3, 17, 1)
    assert item["affines"].shape == (3, 2, 3) and item["affines"].dtype == torch.float32
    assert item["centers"].shape == (3, 2) and item["scales"].shape == (3, 2)
    assert item["image_ids"].tolist() == [10000010000, 10000010001, 10000010002]
    assert item["image_ids"].dtype == torch.int64 and int(item["track_id"]) == 0
    assert item["meta"] == {"video": "000001_bonn", "skipped": ""} and not bool(item["flipped"])
    batch = default_collate([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 3, 3, 40, 30) and batch["affines"].shape == (2, 3, 2, 3)
    assert batch["track_id"].tolist() == [0, 0] and batch["index"].tolist() == [0, 1]


def test_targets_and_images_land_where_the_crop_puts_them(posetrack_root):
    dataset = _val(posetrack_root, clip_length=3)
    item = dataset[0]  # track 0, frames 0-2: cx = 20.5 + 2t, cy = 24.5
    labelled = np.zeros(17, bool)
    labelled[list(OFFSETS)] = True
    for t in range(3):
        cx, cy = 20.5 + 2 * t, 24.5
        assert item["centers"][t].tolist() == [cx, cy] and item["scales"][t].tolist() == [30.0, 40.0]
        # the affine: x_in = x - cx + 14.5, y_in = y - cy + 19.5
        assert np.allclose(item["affines"][t].numpy(), [[1, 0, 14.5 - cx], [0, 1, 19.5 - cy]], atol=1e-5)
        targets, weights = item["targets"][t].numpy(), item["target_weights"][t, :, 0].numpy()
        assert (weights == labelled).all()
        for k, (dx, dy) in OFFSETS.items():
            v, u = np.unravel_index(targets[k].argmax(), targets[k].shape)
            assert (u, v) == _uv(dx, dy) and targets[k].max() == pytest.approx(1.0)
        assert not targets[~labelled].any()
        # the white block of the left wrist (image x = cx + 6 +- 0.5, y = cy + 3 +- 0.5) -> input pixels
        # x 20, 21 and y 22, 23 (pure translation by a whole number of pixels)
        bright = _brightness(item["images"][t]) > 200
        assert sorted(zip(*np.nonzero(bright))) == [(22, 20), (22, 21), (23, 20), (23, 21)]


def test_online_crop_matches_the_clip_crop(posetrack_root):
    # the crop an online run takes from a box (here frame 1's GT box of track 0, centre (22.5, 24.5))
    image = read_rgb(posetrack_root / "images/val/000001_bonn/000001.jpg")
    crop, affine = crop_image(image, (22.5, 24.5), (30.0, 40.0), INPUT)
    assert np.allclose(affine, [[1, 0, 14.5 - 22.5], [0, 1, 19.5 - 24.5]], atol=1e-6)
    assert affine.dtype == np.float32 and crop.shape == (3, 40, 30)
    assert torch.allclose(crop, _val(posetrack_root, clip_length=2)[0]["images"][1])


def test_unreadable_frame_skips_the_clip_in_training_and_is_named_in_evaluation(posetrack_root):
    bad = posetrack_root / "images/train/000003_mpii_train/000001.jpg"
    bad.write_bytes(b"not a jpeg")
    train = posetrack_data(str(posetrack_root), splits=["train"], clip_length=2, **COMMON).train
    item = train[0]  # clip 0 (frames 0, 1 of track 0) cannot be read: clip 1 (frames 2, 3) instead
    assert int(item["index"]) == 1 and item["meta"]["skipped"] == str(bad)
    assert item["image_ids"].tolist() == [10000030002, 10000030003]
    bad_val = posetrack_root / "images/val/000001_bonn/000001.jpg"
    bad_val.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="000001.jpg"):
        _val(posetrack_root, clip_length=2)[0]


def _brightness(image: torch.Tensor) -> np.ndarray:
    """(H, W) mean 0..255 value of a normalised (3, H, W) crop."""
    rgb = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return rgb.mean(axis=2) * 255.0


def test_flip_applies_to_every_frame_and_swaps_left_and_right(posetrack_root):
    plain = _val(posetrack_root, clip_length=3)[0]
    flipped_set = posetrack_data(str(posetrack_root), splits=["train"], clip_length=3, **COMMON,
                                 augment=dict(scale_factor=0.0, rot_factor=0.0, rot_prob=0.0, flip_prob=1.0)).train
    item = flipped_set[0]  # the same people (the train video copies the first val video)
    assert bool(item["flipped"])
    for t in range(3):
        targets = item["targets"][t].numpy()
        # mirrored in the crop: dx -> -dx, and the left wrist's target moves to the right wrist's slot
        for slot, (dx, dy) in ((RIGHT_WRIST, OFFSETS[LEFT_WRIST]), (LEFT_WRIST, OFFSETS[RIGHT_WRIST])):
            v, u = np.unravel_index(targets[slot].argmax(), targets[slot].shape)
            assert (u, v) == _uv(-dx, dy)
        assert torch.allclose(item["images"][t], plain["images"][t].flip(-1), atol=1e-5)
        # the affine still maps ORIGINAL image pixels: x_in = -(x - cx) + 14.5
        cx = 20.5 + 2 * t
        assert np.allclose(item["affines"][t].numpy(), [[-1, 0, 14.5 + cx], [0, 1, 19.5 - 24.5]], atol=1e-5)


def test_one_scale_and_rotation_draw_for_the_whole_clip(posetrack_root):
    dataset = posetrack_data(str(posetrack_root), splits=["train"], clip_length=3, **COMMON,
                             augment=dict(scale_factor=0.3, rot_factor=30.0, rot_prob=1.0, flip_prob=0.5)).train
    linear_parts = []
    for seed in range(4):
        torch.manual_seed(seed)
        item = dataset[1]
        ratios = item["scales"].numpy() / np.array([30.0, 40.0])
        assert np.allclose(ratios, ratios[0, 0], atol=1e-5)  # every frame, both axes: one scale factor
        linear = item["affines"][:, :, :2].numpy()
        assert np.allclose(linear, linear[0], atol=1e-5)  # one rotation and scale (and flip) for the clip
        linear_parts.append(linear[0])
    assert not all(np.allclose(linear_parts[0], other) for other in linear_parts[1:])  # the draw does vary


def _gaussian(shape: tuple[int, int], u: float, v: float, sigma: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                            torch.arange(shape[1], dtype=torch.float32), indexing="ij")
    return torch.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma ** 2))


def _affine(cx: float, cy: float, w: float, h: float) -> list[list[float]]:
    """Image -> input affine of an unrotated crop of w x h image pixels around (cx, cy) into a 64 x 48 input
    (H x W): x_in = (x - cx) * 48 / w + 23.5, y_in = (y - cy) * 64 / h + 31.5."""
    sx, sy = 48 / w, 64 / h
    return [[sx, 0, 23.5 - sx * cx], [0, sy, 31.5 - sy * cy]]


def _warp(heat: torch.Tensor, src: list, dst: list) -> torch.Tensor:
    return warp_heatmaps(heat[None, None], torch.tensor([src]), torch.tensor([dst]), (64, 48), (16, 12))[0, 0]


def test_warp_moves_a_peak_with_the_crop_translation():
    # input 64 x 48, heatmap 16 x 12 (4 input px per heatmap px), crops of 48 x 64 image px (1 px = 1 px).
    # Source crop at (100, 200): heatmap (5, 6) is input (21.5, 25.5), image (98, 194). The target crop at
    # (104, 196) puts image (98, 194) at input (17.5, 29.5), heatmap ((17.5 + .5) / 4 - .5, ...) = (4, 7).
    heat = _gaussian((16, 12), 5, 6, 1.5)
    out = _warp(heat, _affine(100, 200, 48, 64), _affine(104, 196, 48, 64))
    v, u = np.unravel_index(out.argmax().item(), out.shape)
    assert (u, v) == (4, 7) and out[7, 4].item() == pytest.approx(1.0, abs=1e-5)
    # the whole map moves along; the last column and first row come from outside the source (0 there; the
    # moved Gaussian holds at most exp(-49 / 4.5) = 2e-5 on them)
    assert torch.allclose(out, _gaussian((16, 12), 4, 7, 1.5), atol=1e-4)
    assert out[:, 11].abs().max().item() == 0.0 and out[0].abs().max().item() == 0.0
    # one row up of the target is one row up of the source
    assert out[6, 4].item() == pytest.approx(heat[5, 5].item(), abs=1e-5)


def test_warp_follows_a_scale_change():
    # Source crop 48 x 64 at (100, 200): heatmap u = (x - 100) / 4 + 5.5, v = (y - 200) / 4 + 7.5.
    # Target crop 96 x 128 at (102, 202) (half the size in the input): u = (x - 102) / 8 + 5.5,
    # v = (y - 202) / 8 + 7.5. Image (106, 206) is source (7, 9) and target (6, 8); image (114, 206) is
    # source (9, 9) and target (7, 8). So the peak lands at (6, 8) and a source sigma of 2 becomes 1:
    # target (7, 8) holds exp(-(9 - 7)^2 / (2 * 2^2)) = exp(-0.5).
    heat = _gaussian((16, 12), 7, 9, 2.0)
    out = _warp(heat, _affine(100, 200, 48, 64), _affine(102, 202, 96, 128))
    v, u = np.unravel_index(out.argmax().item(), out.shape)
    assert (u, v) == (6, 8) and out[8, 6].item() == pytest.approx(1.0, abs=1e-5)
    assert out[8, 7].item() == pytest.approx(np.exp(-0.5), abs=1e-5)
    assert out[9, 6].item() == pytest.approx(np.exp(-0.5), abs=1e-5)


def test_warp_gives_zero_outside_the_source_crop_and_passes_gradients():
    heat = torch.ones(16, 12, requires_grad=True)
    far = _warp(heat, _affine(100, 200, 48, 64), _affine(1000, 1000, 48, 64))
    assert far.abs().max().item() == 0.0
    # the target crop shifted right by 24 image px (half the crop): its right half shows no source pixel.
    # Heatmap column u covers input x in [4u - .5, 4u + 3.5]; shifted by 24 it is source x + 24, inside the
    # source (x <= 47.5) up to u = 5, entirely outside from u = 6 on. Target column u samples exactly
    # source column u + 6 (input 4u + 1.5 + 24 is heatmap u + 6), so the gradient reaches columns 6..11 only.
    half = _warp(heat, _affine(100, 200, 48, 64), _affine(124, 200, 48, 64))
    assert half[:, 6:].abs().max().item() == 0.0
    assert torch.allclose(half[:, :6], torch.ones(16, 6))
    half.sum().backward()
    assert torch.allclose(heat.grad[:, 6:], torch.ones(16, 6)) and heat.grad[:, :6].abs().max().item() == 0.0


def test_warp_batches_each_pair_of_crops_on_its_own():
    heat = torch.stack([_gaussian((16, 12), 5, 6, 1.5), _gaussian((16, 12), 7, 9, 2.0)])[:, None]
    src = torch.tensor([_affine(100, 200, 48, 64), _affine(100, 200, 48, 64)])
    dst = torch.tensor([_affine(104, 196, 48, 64), _affine(102, 202, 96, 128)])
    out = warp_heatmaps(heat.repeat(1, 3, 1, 1), src, dst, (64, 48), (16, 12))
    assert out.shape == (2, 3, 16, 12)
    for b, (u, v) in enumerate([(4, 7), (6, 8)]):
        for k in range(3):
            assert np.unravel_index(out[b, k].argmax().item(), (16, 12)) == (v, u)


def test_box_from_keypoints_by_hand():
    coords = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 40.0], [500.0, 500.0]])
    scores = np.array([0.9, 0.5, 0.6, 0.1])
    # joints with score >= 0.5: x 10..30, y 20..60 -> box 20 x 40 around (20, 40); aspect 0.75 needs
    # w = 30 for h = 40; times 1.25 -> (37.5, 50)
    center, scale = box_from_keypoints(coords, scores, min_score=0.5, aspect_ratio=0.75)
    assert center.tolist() == [20.0, 40.0] and scale.tolist() == [37.5, 50.0]
    # a wide box: x 0..80, y 0..20 -> h = 80 / 0.75 = 106.67 for w = 80; expand 1.0 keeps it
    center, scale = box_from_keypoints([[0, 0], [80, 20], [40, 10]], [1, 1, 1], 0.5, 0.75, expand=1.0)
    assert center.tolist() == [40.0, 10.0] and scale == pytest.approx([80.0, 80.0 / 0.75])
    previous = (np.array([5.0, 6.0]), np.array([7.0, 8.0]))
    # only two joints score >= 0.55 (min_joints 3): the previous box comes back unchanged
    center, scale = box_from_keypoints(coords, scores, 0.55, 0.75, previous=previous)
    assert center.tolist() == [5.0, 6.0] and scale.tolist() == [7.0, 8.0]
    # three confident joints on one point: no box to take
    center, _ = box_from_keypoints([[3, 3]] * 3, [1, 1, 1], 0.5, 0.75, previous=previous)
    assert center.tolist() == [5.0, 6.0]
    with pytest.raises(ValueError, match="no previous box"):
        box_from_keypoints(coords, scores, 0.95, 0.75)


def test_video_data_and_missing_split(posetrack_root):
    data = posetrack_data(str(posetrack_root), clip_length=2, max_val_videos=1, **COMMON)
    assert isinstance(data, VideoData) and data.num_keypoints == 17 and data.flip_pairs[0] == (3, 4)
    assert [v.name for v in data.val_videos] == ["000001_bonn"] and len(data.val) == 5
    assert data.train.train and not data.val.train and len(data.train) == 5
    shutil.rmtree(posetrack_root / "annotations" / "train")
    with pytest.raises(MissingSplitError) as err:
        posetrack_data(str(posetrack_root), splits=["train"])
    message = str(err.value)
    assert "\n" not in message and "split 'train'" in message
    assert str(posetrack_root / "annotations" / "train") in message
    cfg = OmegaConf.create({"_target_": "nas.data.build_video.posetrack_data", "root": str(posetrack_root),
                            "clip_length": 2, **{k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in COMMON.items()}})
    built, missing = build_splits(cfg, None)  # the inspector's way: the existing split, the other named
    assert built.train is None and len(built.val) == 6 and list(missing) == ["train"]
    with pytest.raises(UserError, match="does not exist"):
        posetrack_data(str(posetrack_root / "nowhere"))
    with pytest.raises(UserError, match="half_body_prob is not a clip augmentation option"):
        posetrack_data(str(posetrack_root), splits=["val"], augment={"half_body_prob": 0.3})


def test_inspector_cli_counts_round_trip_and_clip_pictures(posetrack_root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(module_cmd("nas.data", *FIXTURE_DATA, f"data.root={posetrack_root}", "num_images=2",
                                     f"out_dir={out}"),
                          capture_output=True, text=True, timeout=120, env=run_env(tmp_path / "cache"), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    train, val = summary["splits"]
    # val: 2 videos, 6 + 4 frames, 9 labelled; tracks 0, 1 | 0, 5, 6; people 6 + 5 | 3 + 1 + 1
    assert {k: val[k] for k in ("videos", "frames", "labelled_frames", "tracks", "instances")} == \
        {"videos": 2, "frames": 10, "labelled_frames": 9, "tracks": 5, "instances": 16}
    assert val["clips"] == val["clips_loaded"] == 6 and val["instances_in_clips"] == 12  # 6 + 4 + 2
    assert train["clips"] == 5 and train["videos"] == 1 and summary["missing_splits"] == {}
    # every joint sits on a heatmap pixel centre, so the argmax decoders get it back exactly; DARK smooths
    # with the border mirrored, which tilts the maps of joints near the crop's top or bottom a little
    for split in (train, val):
        assert split["round_trip"] == pytest.approx({"quarter": 1.0, "dark": 1.0, "soft_argmax": 1.0})
        error = split["round_trip_error_px"]
        assert error["quarter"] < 1e-3 and error["soft_argmax"] < 1e-3 and error["dark"] < 0.1
    assert "clips           6 of 2 frames, stride 2, holding 12 instances" in proc.stdout
    pictures = sorted(out.glob("val_*.png"))
    assert len(pictures) == 2 and cv2.imread(str(pictures[0])).shape == (40, 2 * 30 + 2, 3)


def test_image_searches_and_evaluate_refuse_clip_data_in_one_line(posetrack_root, tmp_path):
    """nas.search of an image space on data=posetrack: a one-line error, nothing trained (only
    search_space=temporal searches clips; nas.retrain trains an image network on clips, each frame alone, and
    nas.evaluate refuses them: a video run is scored online by its retrain)."""
    from nas.data.build_video import refuse_clips
    data = ["data=posetrack", f"data.root={posetrack_root}", "data.input_size=[40,30]", "data.heatmap_size=[20,15]"]
    proc = subprocess.run(module_cmd("nas.search", f"run_dir={tmp_path / 'r'}", *data), capture_output=True,
                          text=True, timeout=120, env=run_env(tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "clips of video tracks" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "search_space=temporal" in lines[0]
    assert not (tmp_path / "r" / "last.pt").exists()
    with pytest.raises(UserError, match="nas.evaluate cannot"):
        refuse_clips(posetrack_data(str(posetrack_root), splits=["val"], **COMMON), "evaluate")
