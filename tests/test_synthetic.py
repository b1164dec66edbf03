"""The synthetic COCO-format keypoint dataset: format, labels, left/right cues, determinism, cache."""
from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from nas.data.synthetic import images as synthetic
from nas.data.keypoints import COCO_KEYPOINTS, coco_category
from nas.data.synthetic import (SyntheticSpec, dataset_name, default_cache_dir, ensure_synthetic,
                                generate, label_keypoints)
from nas.data.synthetic.person import PART_ID
from nas.data.synthetic.skeleton import Pose
from nas.errors import UserError
from tests.helpers import tree_bytes

SIZE = 128
SPEC = SyntheticSpec(num_train=40, num_val=6, image_size=(SIZE, SIZE), max_people=4, seed=3)
TINY = SyntheticSpec(num_train=4, num_val=2, image_size=(96, 128), max_people=3, seed=1)
K = {name: i for i, name in enumerate(COCO_KEYPOINTS)}


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())


def _keypoints(ann: dict) -> np.ndarray:
    return np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate(root, SPEC, progress=False)
    return root


@pytest.fixture(scope="module")
def train_anns(dataset) -> list[dict]:
    return _load(dataset, "train")["annotations"]


def test_layout_loads_with_pycocotools(dataset):
    for split, count in (("train", SPEC.num_train), ("val", SPEC.num_val)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(dataset / "annotations" / f"person_keypoints_{split}.json"))
        images = coco.dataset["images"]
        assert len(images) == count == len({im["id"] for im in images})
        for im in images:
            assert "/" not in im["file_name"] and (dataset / split / im["file_name"]).is_file()
            assert (im["height"], im["width"]) == SPEC.image_size
            assert cv2.imread(str(dataset / split / im["file_name"])).shape == (SIZE, SIZE, 3)
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(ann_ids) == len(set(ann_ids)) > 0
        assert coco.dataset["categories"] == [coco_category()]
        assert coco.getAnnIds(catIds=[1]) and coco.getImgIds(catIds=[1])
        info = coco.dataset["info"]
        assert info["generator_version"] == synthetic.GENERATOR_VERSION
        assert info["spec"]["seed"] == SPEC.seed and info["spec"]["num_train"] == SPEC.num_train


def test_annotation_fields_are_consistent(dataset, train_anns):
    image_ids = {im["id"] for im in _load(dataset, "train")["images"]}
    for ann in train_anns:
        kp = _keypoints(ann)
        assert kp.shape == (17, 3) and set(kp[:, 2]) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum()) >= 3
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["image_id"] in image_ids
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
        assert 0 < ann["area"] <= w * h
        unlabelled, labelled, visible = kp[kp[:, 2] == 0], kp[kp[:, 2] > 0], kp[kp[:, 2] == 2]
        assert np.all(unlabelled[:, :2] == 0), "COCO writes unlabelled keypoints as (0, 0, 0)"
        assert np.all((labelled[:, :2] >= 0) & (labelled[:, :2] <= SIZE - 1)), "labelled means in image"
        tol = 1.0
        assert np.all((visible[:, 0] >= x - tol) & (visible[:, 0] <= x + w + tol))
        assert np.all((visible[:, 1] >= y - tol) & (visible[:, 1] <= y + h + tol))


def test_boxes_are_tight_around_the_person(train_anns):
    """Beyond its outermost joints a figure only has a head (above the eyes/ears), hands, feet and
    half a limb width: all well under a quarter of its height. A loose box would exceed that."""
    checked = 0
    for ann in train_anns:
        kp = _keypoints(ann)
        if (kp[5:, 2] > 0).sum() < 12:                 # need most body joints to know the extent
            continue
        x, y, w, h = ann["bbox"]
        pts = kp[kp[:, 2] > 0, :2]
        margin = 0.25 * h + 2
        assert x >= pts[:, 0].min() - margin and x + w <= pts[:, 0].max() + margin
        assert y >= pts[:, 1].min() - margin and y + h <= pts[:, 1].max() + margin
        checked += 1
    assert checked >= 10


def test_scenes_have_crowds_occlusion_truncation_and_both_facings(train_anns):
    per_image = np.bincount([a["image_id"] for a in train_anns])
    assert per_image.max() >= 2, "some images hold several annotated people"
    kps = np.stack([_keypoints(a) for a in train_anns])
    assert (kps[:, :, 2] == 1).sum() >= 5, "occluded-but-labelled keypoints occur"
    body_unlabelled = (kps[:, 5:, 2] == 0).any(1)
    boxes = np.array([a["bbox"] for a in train_anns])
    at_border = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 0] + boxes[:, 2] >= SIZE) | (
        boxes[:, 1] + boxes[:, 3] >= SIZE)
    assert (body_unlabelled & at_border).any(), "some people are cut by the image border"
    face_seen = (kps[:, :3, 2] > 0).any(1)
    assert face_seen.any() and (~face_seen & (kps[:, 3:5, 2] > 0).all(1)).any()
    heights = boxes[:, 3][~at_border]
    assert heights.max() > 2.5 * heights.min(), "people come in clearly different sizes"


def _clear_of_border(p: np.ndarray, margin: float = 6.0) -> bool:
    return bool(np.all(p >= margin) and np.all(p <= SIZE - 1 - margin))


def test_anatomical_sides_follow_facing_direction(train_anns):
    """COCO labels the person's own left: on the image right when facing the camera, else the left."""
    checked = {"front": 0, "back": 0}
    for ann in train_anns:
        kp = _keypoints(ann)
        ls, rs = kp[K["left_shoulder"]], kp[K["right_shoulder"]]
        if ls[2] == 0 or rs[2] == 0:
            continue
        if kp[K["nose"], 2] > 0:                       # a face is labelled: facing the camera
            assert ls[0] > rs[0]
            checked["front"] += 1
        elif all(kp[K[e], 2] > 0 and _clear_of_border(kp[K[e], :2]) for e in ("left_ear", "right_ear")):
            assert ls[0] < rs[0]                       # head fully in view, face not labelled
            checked["back"] += 1
    assert checked["front"] >= 3 and checked["back"] >= 3


def test_left_and_right_limbs_look_different(dataset, train_anns):
    """Mid-forearm pixels: the two sides differ clearly, left in the warm family, right in the cool."""
    images = {im["id"]: im["file_name"] for im in _load(dataset, "train")["images"]}
    samples = []
    for ann in train_anns:
        kp = _keypoints(ann)
        mids = []
        for side in ("left", "right"):
            e, w = kp[K[f"{side}_elbow"]], kp[K[f"{side}_wrist"]]
            if e[2] != 2 or w[2] != 2 or np.linalg.norm(e[:2] - w[:2]) < 6:
                break
            mids.append((e[:2] + w[:2]) / 2)
        if len(mids) == 2:
            image = cv2.imread(str(dataset / "train" / images[ann["image_id"]])).astype(int)
            x, y = (np.round(m).astype(int) for m in zip(*mids))
            samples.append((image[y[0], x[0]], image[y[1], x[1]]))   # BGR left, BGR right
    assert len(samples) >= 8
    differ = [np.abs(left - right).sum() > 60 for left, right in samples]
    warm_left = [left[2] > left[0] and right[0] > right[2] for left, right in samples]
    assert np.mean(differ) >= 0.8 and np.mean(warm_left) >= 0.8


def _pose(facing: bool) -> Pose:
    kps = np.array([[20.0 + 3 * i, 30.0] for i in range(17)])
    return Pose(kps, np.array([40.0, 20.0]), 5.0, facing, 60.0)


def test_label_keypoints_reads_who_is_drawn_at_the_joint():
    """Visibility rules derived by hand: owner value = person * stride + part id, 0 = nothing."""
    pose = _pose(facing=True)
    pose.keypoints[K["right_ankle"]] = (-3.0, 30.0)                       # outside the image
    owner = np.zeros((64, 80), np.uint16)
    mine = lambda part: 2 * synthetic.OWNER_STRIDE + PART_ID[part]     # noqa: E731  person 2
    for name in ("nose", "left_wrist", "left_elbow"):
        x, y = pose.keypoints[K[name]].astype(int)
        owner[y, x] = mine({"nose": "head", "left_wrist": "left_forearm", "left_elbow": "torso"}[name])
    x, y = pose.keypoints[K["right_wrist"]].astype(int)
    owner[y, x] = 1 * synthetic.OWNER_STRIDE + PART_ID["right_forearm"]  # someone else's forearm
    x, y = pose.keypoints[K["left_knee"]].astype(int)
    owner[y, x] = synthetic.OCCLUDER
    labels = label_keypoints(pose, owner, index=2)
    v = {name: labels[K[name], 2] for name in COCO_KEYPOINTS}
    assert v["nose"] == 2 and v["left_wrist"] == 2
    assert v["left_elbow"] == 1, "an elbow is not seen on the torso (it is behind it)"
    assert v["right_wrist"] == 1 and v["left_knee"] == 1 and v["left_hip"] == 1
    assert labels[K["right_ankle"]].tolist() == [0, 0, 0]
    assert labels[K["nose"], :2].tolist() == pose.keypoints[K["nose"]].tolist()
    back = label_keypoints(_pose(facing=False), owner, index=2)
    assert back[:3].tolist() == [[0, 0, 0]] * 3 and (back[3:5, 2] > 0).all()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", TINY, progress=False)
    generate(tmp_path / "b", TINY, progress=False)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    # the images, and per split an annotation file and a person-detection file
    assert len(a) == TINY.num_train + TINY.num_val + 4 and a == b
    generate(tmp_path / "c", replace(TINY, seed=2), progress=False)
    c = tree_bytes(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith(".jpg"))


def test_spec_is_validated_and_normalised():
    assert SyntheticSpec(image_size=[64, 48]).image_size == (64, 48)
    as_list, as_tuple = SyntheticSpec(image_size=[64, 48]), SyntheticSpec(image_size=(64, 48))
    assert dataset_name(as_list) == dataset_name(as_tuple)
    assert dataset_name(TINY) != dataset_name(replace(TINY, seed=2))
    assert dataset_name(TINY).startswith(f"synthetic-v{synthetic.GENERATOR_VERSION}-")
    for bad in ({"max_people": 0}, {"num_val": -1}, {"image_size": (16, 16)}):
        with pytest.raises(ValueError):
            SyntheticSpec(**bad)


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch, capsys):
    root = ensure_synthetic(TINY, tmp_path)
    assert root == tmp_path / dataset_name(TINY) and root.is_dir()
    assert "generating" in capsys.readouterr().out
    inode = root.stat().st_ino
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated"))
    assert ensure_synthetic(TINY, str(tmp_path)) == root and root.stat().st_ino == inode
    assert capsys.readouterr().out.count("\n") <= 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [root.name]


def test_leftover_temp_dir_is_not_a_dataset(tmp_path):
    leftover = tmp_path / f".{dataset_name(TINY)}.tmp-999999"
    (leftover / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (leftover / "annotations" / f"person_keypoints_{split}.json").write_text("{}")
    root = ensure_synthetic(TINY, tmp_path)
    assert root != leftover and not leftover.exists()
    assert len(_load(root, "train")["images"]) == TINY.num_train


def test_killed_generation_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    def dies(root, spec, progress=True):
        (Path(root) / "annotations").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", dies)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(TINY, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_incomplete_dataset_dir_is_reported_not_reused(tmp_path):
    (tmp_path / dataset_name(TINY) / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="delete it"):
        ensure_synthetic(TINY, tmp_path)


def test_cache_dir_argument_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POSENAS_CACHE", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "posenas"
    monkeypatch.setenv("POSENAS_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert ensure_synthetic(TINY).parent == tmp_path / "env"
    assert ensure_synthetic(TINY, tmp_path / "arg").parent == tmp_path / "arg"


def _ensure_in_child(cache: str, queue) -> None:
    queue.put(str(ensure_synthetic(TINY, cache)))


@pytest.mark.skipif(os.name != "posix", reason="fork and fcntl locks are POSIX")
def test_two_processes_generate_only_once(tmp_path, monkeypatch):
    real, calls = synthetic.generate, tmp_path / "calls.txt"

    def counted(root, spec, progress=True):
        with open(calls, "a") as f:
            f.write("x\n")
        real(root, spec, progress=False)

    monkeypatch.setattr(synthetic, "generate", counted)     # inherited by the forked children
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    cache = str(tmp_path / "cache")
    procs = [ctx.Process(target=_ensure_in_child, args=(cache, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert queue.get(timeout=5) == queue.get(timeout=5)
    assert calls.read_text() == "x\n"
