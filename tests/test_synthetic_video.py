"""The synthetic video dataset (PoseTrack18 layout): format, labels, motion, determinism, cache; and the
image generator's output, unchanged by the move into the nas.data.synthetic package."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from nas.data.posetrack import POSETRACK_KEYPOINTS, read_split
from nas.data.synthetic import OCCLUDER, OWNER_STRIDE, SyntheticSpec, generate, render_scene
from nas.data.synthetic.person import PART_ID
from nas.data.synthetic.skeleton import Pose
from nas.data.synthetic import video
from nas.data.synthetic.video import (VideoSpec, ensure_synthetic_video, generate_video, posetrack_keypoints,
                                      video_dataset_name)
from nas.errors import UserError
from tests.conftest import REPO_ROOT
from tests.helpers import tree_bytes

SIZE = 128
# every frame labelled; every person after the first is made to walk into or out of the view
SPEC = VideoSpec(num_train=5, num_val=2, frames=20, image_size=(SIZE, SIZE), max_people=3,
                 enter_leave_prob=1.0, seed=1)
TINY = VideoSpec(num_train=2, num_val=1, frames=4, image_size=(64, 64), max_people=2, seed=2)
K = {name: i for i, name in enumerate(POSETRACK_KEYPOINTS)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic_video") / "data"
    return root, generate_video(root, SPEC, progress=False)


@pytest.fixture(scope="module")
def videos(generated) -> dict[str, list]:
    root, _ = generated
    return {split: read_split(root, split) for split in ("train", "val")}


def _docs(root: Path, split: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "annotations" / split).glob("*.json"))]


def _tracks(video) -> dict[int, dict[int, np.ndarray]]:
    """{track_id: {frame_id: (17, 3) keypoints}} of one video."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for frame in video.frames:
        for person in frame.people:
            out.setdefault(person.track_id, {})[frame.frame_id] = person.keypoints
    return out


# ---- format -------------------------------------------------------------------------------------------

def test_files_parse_with_the_posetrack_reader(generated, videos):
    root, _ = generated
    assert [len(videos["train"]), len(videos["val"])] == [SPEC.num_train, SPEC.num_val]
    image_ids = [f.image_id for split in videos.values() for v in split for f in v.frames]
    assert len(image_ids) == len(set(image_ids)) == (SPEC.num_train + SPEC.num_val) * SPEC.frames
    for v in videos["train"] + videos["val"]:
        assert v.nframes == SPEC.frames and [f.frame_id for f in v.frames] == list(range(SPEC.frames))
        assert all(f.is_labeled for f in v.frames)
        assert cv2.imread(str(v.frames[-1].file_path)).shape == (SIZE, SIZE, 3)
    for split in ("train", "val"):
        for doc in _docs(root, split):
            assert doc["categories"][0]["keypoints"] == list(POSETRACK_KEYPOINTS)
            for im in doc["images"]:
                assert im["file_name"] == f"images/{split}/{im['file_name'].split('/')[2]}/{im['frame_id']:06d}.jpg"
                assert (root / im["file_name"]).is_file()
                assert {"id", "vid_id", "frame_id", "nframes", "is_labeled"} <= im.keys()
            assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"]) > 0


def test_labels_are_in_the_frame_ears_never_and_counts_agree(generated):
    root, _ = generated
    count = 0
    for split in ("train", "val"):
        for doc in _docs(root, split):
            for ann in doc["annotations"]:
                kp = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
                assert set(kp[:, 2]) <= {0, 1, 2}
                assert kp[[K["left_ear"], K["right_ear"]]].tolist() == [[0, 0, 0]] * 2
                labelled = kp[kp[:, 2] > 0]
                assert ((labelled[:, :2] >= 0) & (labelled[:, :2] <= SIZE - 1)).all()
                assert (kp[kp[:, 2] == 0] == 0).all()
                assert ann["num_keypoints"] == len(labelled) >= 3 and (kp[:, 2] == 2).any()
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and w >= 8 and h >= 8 and x + w <= SIZE and y + h <= SIZE
                count += 1
    assert count > 50


def test_a_track_id_names_one_person_throughout(videos):
    """Between consecutive frames each person's nearest annotation (mean distance of the keypoints
    labelled in both) in the previous frame carries its own track id; ids are unique within a frame."""
    compared = 0
    for v in videos["train"] + videos["val"]:
        for before, now in zip(v.frames, v.frames[1:]):
            assert len({p.track_id for p in now.people}) == len(now.people)
            for p in now.people:
                def distance(q) -> float:
                    both = (p.keypoints[:, 2] > 0) & (q.keypoints[:, 2] > 0)
                    return float(np.linalg.norm(p.keypoints[both, :2] - q.keypoints[both, :2], axis=1).mean()) \
                        if both.any() else np.inf
                if any(q.track_id == p.track_id for q in before.people):
                    assert min(before.people, key=distance).track_id == p.track_id
                    compared += 1
    assert compared > 100


def test_head_keypoints_by_hand():
    """head_top/bottom: the head circle's top and bottom along head_up; seen where the head (bottom: or
    the neck) shows 0.7 radius inside; the nose follows the image rule; the ears are never labelled."""
    kps = np.tile([30.0, 40.0], (17, 1))
    pose = Pose(kps, np.array([20.0, 10.0]), 5.0, True, 60.0, np.array([0.0, -1.0]))
    owner = np.zeros((48, 64), np.uint16)
    me = 3 * OWNER_STRIDE
    owner[6, 20] = me + PART_ID["head"]          # 0.7 * 5 = 3.5 above the centre rounds to row 6
    owner[14, 20] = OCCLUDER                     # ... below: row 14 (13.5 rounds to even)
    owner[40, 30] = me + PART_ID["left_forearm"]
    labels, why = posetrack_keypoints(pose, owner, index=3)
    assert labels[K["head_top"]].tolist() == [20.0, 5.0, 2.0]
    assert labels[K["head_bottom"]].tolist() == [20.0, 15.0, 1.0] and why[K["head_bottom"]] == video._HIDDEN_OBJECT
    assert labels[K["left_wrist"], 2] == 2 and labels[K["nose"], 2] == 1 and labels[K["left_shoulder"], 2] == 1
    assert labels[K["left_ear"]].tolist() == labels[K["right_ear"]].tolist() == [0, 0, 0]
    owner[14, 20] = me + PART_ID["neck"]
    assert posetrack_keypoints(pose, owner, index=3)[0][K["head_bottom"], 2] == 2
    top_out = Pose(kps, np.array([20.0, 3.0]), 5.0, False, 60.0, np.array([0.0, -1.0]))   # crown at y = -2
    labels, _ = posetrack_keypoints(top_out, owner, index=3)
    assert labels[K["head_top"]].tolist() == [0, 0, 0] and labels[K["head_bottom"], 2] > 0
    assert labels[K["nose"]].tolist() == [0, 0, 0]     # facing away


def test_label_every_and_middle_run():
    """frames=12, label_every=4, label_middle=3: every 4th frame (0, 4, 8) and the middle run starting at
    (12 - 3) // 2 = 4 (4, 5, 6); unlabelled frames carry no people."""
    spec = replace(TINY, frames=12, label_every=4, label_middle=3)
    assert [t for t in range(12) if spec.labelled(t)] == [0, 4, 5, 6, 8]


def test_unlabelled_frames_have_no_annotations(tmp_path):
    spec = replace(TINY, num_train=1, num_val=0, frames=9, label_every=4)
    generate_video(tmp_path, spec, progress=False)
    (v,) = read_split(tmp_path, "train")
    assert [f.frame_id for f in v.frames if f.is_labeled] == [0, 4, 8]
    assert all(not f.people for f in v.frames if not f.is_labeled)


# ---- motion and the temporal statistics ---------------------------------------------------------------

def test_joints_move_less_between_consecutive_frames_than_between_any_two(videos):
    """And no joint moves more in one frame than the dynamics allow. The bound, from video.py's constants:
    a person is at most h = 0.8 * 1.35 * 1.08 = 1.17 frame heights tall (HEIGHT_RANGE, ZOOM_RANGE, the 8 %
    size wave); per frame the fastest joint angles turn 7.3 deg (thigh: 28 deg swing, 24-frame stride) plus
    11.8 deg (knee: 45 * 2 pi / 24), or 11 deg (shoulder: 35 deg wave, 20-frame period) plus 12.6 deg
    (elbow) at the wrist: at most 0.13 h; the pelvis moves at most 0.05 h (walk 0.035 h, bob, sway), lean and
    size waves add 0.02 h, the camera at most 4 px at 128 px (pan, its sway, the zoom wave). In all
    0.2 * 1.17 * 128 + 4 = 34 px: below 0.27 * SIZE."""
    steps, spreads = [], []
    for v in videos["train"] + videos["val"]:
        for frames in _tracks(v).values():
            for (a, ka), (b, kb) in itertools.combinations(sorted(frames.items()), 2):
                both = (ka[:, 2] > 0) & (kb[:, 2] > 0)
                d = np.linalg.norm(ka[both, :2] - kb[both, :2], axis=1)
                (steps if b == a + 1 else spreads).extend(d)
    assert len(steps) > 500
    assert np.mean(steps) < 0.35 * np.mean(spreads)
    assert max(steps) < 0.27 * SIZE


def test_some_tracks_enter_or_leave_mid_video(generated, videos):
    _, stats = generated
    entering = leaving = 0
    for v in videos["train"] + videos["val"]:
        for frames in _tracks(v).values():
            entering += min(frames) > 0
            leaving += max(frames) < SPEC.frames - 1
    assert entering + leaving > 0
    assert entering == sum(s["tracks_entering"] for s in stats.values())
    assert leaving == sum(s["tracks_leaving"] for s in stats.values())


def test_hidden_then_seen_occurs_and_the_statistic_matches_the_files(generated, videos):
    """Counted here from the files: keypoints hidden now and seen in the previous frame, over the labelled
    keypoints of people annotated in the previous frame."""
    _, stats = generated
    for split, split_videos in videos.items():
        hidden_after_seen = labelled = 0
        for v in split_videos:
            for frames in _tracks(v).values():
                for t, kp in frames.items():
                    if t - 1 in frames:
                        labelled += int((kp[:, 2] > 0).sum())
                        hidden_after_seen += int(((kp[:, 2] == 1) & (frames[t - 1][:, 2] == 2)).sum())
        assert stats[split]["hidden_seen_before"] == pytest.approx(hidden_after_seen / labelled, abs=1e-4)
    assert sum(s["hidden_seen_before"] for s in stats.values()) > 0
    assert stats["train"]["hidden_seen_in_clip_of_hidden"] >= stats["train"]["hidden_seen_before_of_hidden"]


# ---- determinism and cache ----------------------------------------------------------------------------

def test_same_spec_same_bytes_other_seed_other_videos(tmp_path):
    generate_video(tmp_path / "a", TINY, progress=False)
    generate_video(tmp_path / "b", TINY, progress=False)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(a) == 3 * TINY.frames + 3 + 1 and a == b     # frames, one file per video, the info file
    generate_video(tmp_path / "c", replace(TINY, seed=3), progress=False)
    c = tree_bytes(tmp_path / "c")
    assert a.keys() == c.keys() and all(a[n] != c[n] for n in a if n.endswith(".jpg"))


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch, capsys):
    root = ensure_synthetic_video(TINY, tmp_path)
    assert root == tmp_path / video_dataset_name(TINY) and root.name.startswith("synthetic-video-v")
    assert "generating synthetic video data" in capsys.readouterr().out
    info = json.loads((root / video.INFO_FILE).read_text())
    assert info["spec"]["seed"] == TINY.seed and set(info["stats"]) == {"train", "val"}
    monkeypatch.setattr(video, "generate_video", lambda *a, **k: pytest.fail("regenerated"))
    assert ensure_synthetic_video(TINY, str(tmp_path)) == root
    monkeypatch.setenv("POSENAS_CACHE", str(tmp_path))
    assert ensure_synthetic_video(TINY) == root and capsys.readouterr().out == ""


def test_spec_is_validated_and_every_field_is_in_the_key():
    assert VideoSpec(image_size=[64, 48]).image_size == (64, 48)
    assert video_dataset_name(VideoSpec(image_size=[64, 48])) == video_dataset_name(VideoSpec(image_size=(64, 48)))
    changed = {"num_train": 1, "num_val": 1, "frames": 5, "image_size": (64, 64), "max_people": 1,
               "label_every": 2, "label_middle": 3, "enter_leave_prob": 0.1, "max_occluders": 0, "seed": 9}
    assert set(changed) == {f.name for f in fields(VideoSpec)}
    names = {video_dataset_name(replace(VideoSpec(), **{k: v})) for k, v in changed.items()}
    assert len(names | {video_dataset_name(VideoSpec())}) == len(changed) + 1
    for bad in ({"frames": 0}, {"max_people": 0}, {"label_every": 0}, {"enter_leave_prob": 1.5},
                {"image_size": (16, 16)}, {"label_middle": 31}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}="):
            VideoSpec(**bad)


def test_config_matches_the_spec_and_a_bad_value_is_a_user_error():
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "synthetic_video.yaml")
    defaults = VideoSpec()
    for f in fields(VideoSpec):
        value = cfg[f.name]
        assert (tuple(value) if f.name == "image_size" else value) == getattr(defaults, f.name), f.name
    with pytest.raises(UserError, match=r"^data\.max_people=0 "):
        video.synthetic_video_data(max_people=0)


def test_synthetic_video_data_builds_clips_from_the_generated_root(tmp_path):
    data = video.synthetic_video_data(num_train=2, num_val=1, frames=6, image_size=(64, 64), seed=4,
                                      cache_dir=str(tmp_path), input_size=(32, 24), heatmap_size=(8, 6))
    assert data.name == "synthetic_video" and len(data.train) > 0 and len(data.val) > 0
    assert data.train[0]["images"].shape == (4, 3, 32, 24)


# ---- the image generator, unchanged by the move -------------------------------------------------------
# sha256 of every file of SyntheticSpec(num_train=3, num_val=2, image_size=(96, 128), max_people=3, seed=1)
# and of four rendered images (raw pixels, before JPEG), computed with nas/data/synthetic*.py BEFORE they
# moved into the package. A different OpenCV (drawing, JPEG) can change them too.
IMAGE_FILES = {
    "annotations/person_keypoints_train.json": "2054cdd1422d04ef1f362a401c4a35cdd812a43a8d31ceac027968663e2781d5",
    "annotations/person_keypoints_val.json": "967fdfdfdaa2c17f464d16fcf09f59aa937457628943ce230a1e186cdba4968d",
    "person_detection_results/synthetic_train_detections.json":
        "a6c9faef119f729b6db7fcc62978c3967b5c4e7a05e6527fac02cf9d3c158650",
    "person_detection_results/synthetic_val_detections.json":
        "41c4e0ca769e84e68f8f3503ddc8ce201e4ed20fa026d3381402768411b7a9d4",
    "train/000000000001.jpg": "8a95be143e73ba20f29db9cc26b4be7159011a4858bdee11934a97c1fcb922a5",
    "train/000000000002.jpg": "8c6cfc17e133ee97e626a06e594dcbdb70e0a10387b1bb2e0709bb6ad4c52a47",
    "train/000000000003.jpg": "5a10593927315178854d53a26ce316b61ae2cddeae870fec783b2c5f2c2d5b93",
    "val/000000000001.jpg": "cc40e9ed037fa1c7aae6a6495105741ba9a488f3a9c88e4d2ab65328764bde44",
    "val/000000000002.jpg": "66a41d9340c34356346b1e0cd49c485e24c2b8d2eb55073ddaec98c1b044688b",
}
RENDERED = {  # (seed, split index, image index, (H, W), max_people): (sha256 of the pixels, people annotated)
    (0, 0, 0, (256, 256), 4): ("8d567306b924db859dda5be14a3e77bde789a5a0773e511c991ca03ecf14e8cc", 4),
    (0, 0, 5, (256, 256), 4): ("cbae623273bf00aee9189bd437700647f7100d8df6200e3da1aaa812c8669184", 2),
    (0, 1, 2, (256, 256), 4): ("12c9e841cfcf7a9126dbf62a800de93004b1fa6534d33ced2ed9058a189ffc0f", 2),
    (1, 0, 1, (96, 128), 3): ("ccfcf40f434f4cf61de538f86b7444496ca1af6e6c6f137b44c88b6c174fa19a", 2),
}


def test_image_generator_output_is_unchanged(tmp_path):
    generate(tmp_path, SyntheticSpec(num_train=3, num_val=2, image_size=(96, 128), max_people=3, seed=1),
             progress=False)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in tree_bytes(tmp_path).items()}
    assert hashes == IMAGE_FILES
    for (seed, split, index, size, people), (digest, count) in RENDERED.items():
        image, anns = render_scene(np.random.default_rng([seed, split, index]), *size, people)
        assert (hashlib.sha256(image.tobytes()).hexdigest(), len(anns)) == (digest, count)
