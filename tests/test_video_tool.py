"""python -m nas.video: a pose network run online over a video, an image folder or a PoseTrack18 video, written
back as an annotated video (and PNGs); its one-line errors; the online crops and the drawing on hand-computed values.

Inputs are tiny (64 x 48 frames, 3 to 5 of them) and the networks run at 32 x 24 with random weights (a genotype
file): the kept darts_cells genotype as the image network, and a temporal genotype sampled from the shipped
temporal space (seed 0: a cycle of 2 light frames after each key frame)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nas.data.posetrack import read_video
from nas.genotype import save
from nas.spaces import build_space
from nas.video import Step, TrackStart, draw_person, follow_track, main, posetrack_tracks
from tests.helpers import REPO_ROOT

IMAGE_NET = REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json"
W, H = 64, 48
SMALL = ["--input-size", "32", "24", "--threads", "1"]
SECOND_TRACK_BGR = (255, 128, 0)  # nas.video.TRACK_BGR[1]: no blend of the other colours drawn can make it


@pytest.fixture(scope="module")
def temporal_net(tmp_path_factory) -> Path:
    genotype = build_space("temporal", {}).sample(random.Random(0))
    assert genotype.genotype["cycle"] == 2  # key, light0, light1: the counts below rely on it
    return save(genotype, tmp_path_factory.mktemp("temporal") / "temporal.json")


def _frames(count: int) -> list[np.ndarray]:
    """Frames that differ (a bright square moving right on grey), BGR uint8."""
    frames = []
    for t in range(count):
        frame = np.full((H, W, 3), 90, np.uint8)
        frame[10:30, 10 + 4 * t:26 + 4 * t] = 200
        frames.append(frame)
    return frames


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "frames"
    path.mkdir()
    for t, frame in enumerate(_frames(5)):
        cv2.imwrite(str(path / f"{t:03d}.png"), frame)
    (path / "notes.txt").write_text("not a frame")
    return path


def _write_video(path: Path, frames: list[np.ndarray], fps: float, fourcc: str) -> bool:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    if not writer.isOpened():
        return False
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path.is_file() and path.stat().st_size > 0


def _read_back(path: Path) -> tuple[int, tuple[int, int], float]:
    """Frames, (W, H) and fps of a written video, as OpenCV reads it."""
    capture = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, (frame.shape[1], frame.shape[0])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, size, fps


def _need_writer(tmp_path: Path, suffix: str = ".mp4", fourcc: str = "mp4v") -> None:
    if not _write_video(tmp_path / f"probe{suffix}", _frames(1), 10, fourcc):
        pytest.skip(f"this OpenCV build cannot write {suffix} ({fourcc})")


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# ---- end to end ----------------------------------------------------------------------------------------

def test_image_folder_with_an_image_network(folder, tmp_path, monkeypatch, capsys):
    _need_writer(tmp_path)
    monkeypatch.chdir(tmp_path)
    pngs = tmp_path / "pngs"
    main([str(IMAGE_NET), str(folder), "--box", "10", "5", "20", "30", "--frames-dir", str(pngs), *SMALL])
    out = capsys.readouterr().out
    written = tmp_path / "frames_pose.mp4"  # the default: <input name>_pose.mp4 in the current directory
    assert _read_back(written)[:2] == (5, (W, H))
    assert sorted(p.name for p in pngs.iterdir()) == [f"frame_{t:06d}.png" for t in range(5)]
    assert "random weights" in out and "followed 1 track over 5 frames: 5 steps" in out
    assert "per cycle position" not in out  # one network: no cycle
    assert f"wrote {written} (5 frames, 64x48, 10 fps)" in out  # a folder does not say its fps: 10
    assert not list(tmp_path.glob(".*partial*"))


def test_video_file_with_a_temporal_network_names_each_cycle_position(temporal_net, tmp_path, capsys):
    source = tmp_path / "walk.avi"
    if not _write_video(source, _frames(5), 7.0, "MJPG"):
        pytest.skip("this OpenCV build cannot write an MJPG .avi to read back")
    _need_writer(tmp_path)
    out_path = tmp_path / "out" / "walk.mp4"
    out_path.parent.mkdir()
    main([str(temporal_net), str(source), "--box", "10", "5", "20", "30", "--out", str(out_path), *SMALL])
    out = capsys.readouterr().out
    count, size, fps = _read_back(out_path)
    assert (count, size) == (5, (W, H))
    assert fps == pytest.approx(7.0, abs=0.01)  # the input video's
    # steps 0..4 of a cycle of 1 key + 2 light frames: key at 0 and 3, light0 at 1 and 4, light1 at 2
    line = next(x for x in out.splitlines() if "per cycle position" in x)
    positions = line.split("per cycle position: ")[1].split(", ")
    assert [p.split()[0] for p in positions] == ["key", "light0", "light1"]
    assert [p.split()[-1] for p in positions] == ["x2", "x2", "x1"]


def test_max_frames_and_an_avi_output(folder, tmp_path, capsys):
    _need_writer(tmp_path, ".avi", "MJPG")
    out_path = tmp_path / "short.avi"
    main([str(IMAGE_NET), str(folder), "--box", "10", "5", "20", "30", "--out", str(out_path), "--max-frames", "3",
          "--fps", "4", *SMALL])
    count, size, fps = _read_back(out_path)
    assert (count, size) == (3, (W, H)) and fps == pytest.approx(4.0)
    assert "over 3 frames" in capsys.readouterr().out


def test_an_existing_output_is_kept_unless_overwrite(folder, tmp_path, capsys):
    _need_writer(tmp_path)
    out_path = tmp_path / "taken.mp4"
    out_path.write_bytes(b"someone's video")
    argv = [str(IMAGE_NET), str(folder), "--box", "10", "5", "20", "30", "--out", str(out_path), *SMALL]
    err = _error(argv, capsys)
    assert "taken.mp4 already exists" in err and "--overwrite" in err
    assert out_path.read_bytes() == b"someone's video"
    main([*argv, "--overwrite"])
    assert _read_back(out_path)[0] == 5


# ---- PoseTrack ---------------------------------------------------------------------------------------------

BOX_0, BOX_1 = [10.0, 8.0, 20.0, 30.0], [36.0, 10.0, 20.0, 30.0]


@pytest.fixture
def posetrack(tmp_path) -> tuple[Path, Path]:
    """One PoseTrack18 video of 3 labelled frames: track 0 in frames 0-2 (box BOX_0 in frame 0), track 1 in
    frames 1-2 (BOX_1 in frame 1, moved in frame 2). Returns (root, annotation file)."""
    root = tmp_path / "posetrack"
    images, annotations = [], []
    for t in range(3):
        image_id = 10000000000 + 10000 + t
        file_name = f"images/val/000001_bonn/{t:06d}.jpg"
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / file_name), np.full((H, W, 3), 90, np.uint8))
        images.append({"id": image_id, "frame_id": image_id, "vid_id": "000001", "nframes": 3, "is_labeled": True,
                       "file_name": file_name})
        people = [(0, [BOX_0[0] + t, *BOX_0[1:]])] + ([(1, [BOX_1[0] + t - 1, *BOX_1[1:]])] if t else [])
        for track, box in people:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "track_id": track, "bbox": box,
                                "keypoints": [0] * 51, "category_id": 1})
    path = root / "annotations" / "val" / "000001_bonn.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return root, path


def test_posetrack_tracks_start_from_their_first_annotated_box(posetrack):
    root, path = posetrack
    assert posetrack_tracks(read_video(path, root)) == [TrackStart(0, 0, 2, BOX_0), TrackStart(1, 1, 2, BOX_1)]


@pytest.mark.parametrize("form", ["json_input", "annotations_option"])
def test_posetrack_input_follows_every_track(posetrack, form, tmp_path, monkeypatch, capsys):
    _need_writer(tmp_path)
    root, path = posetrack
    monkeypatch.chdir(tmp_path)
    where = [str(path), "--root", str(root)] if form == "json_input" else [str(root), "--annotations", str(path)]
    pngs = tmp_path / "pngs"
    main([str(IMAGE_NET), *where, "--frames-dir", str(pngs), *SMALL])
    out = capsys.readouterr().out
    assert _read_back(tmp_path / "000001_bonn_pose.mp4")[:2] == (3, (W, H))
    assert "followed 2 tracks over 3 frames: 5 steps" in out  # track 0: 3 frames, track 1: 2
    second = [int((cv2.imread(str(pngs / f"frame_{t:06d}.png")) == SECOND_TRACK_BGR).all(axis=2).sum())
              for t in range(3)]
    assert second[0] == 0 and second[1] > 0 and second[2] > 0  # track 1 is drawn where it is followed only


def test_posetrack_errors(posetrack, tmp_path, capsys):
    root, path = posetrack
    assert "needs --root" in _error([str(IMAGE_NET), str(path)], capsys)
    err = _error([str(IMAGE_NET), str(path), "--root", str(tmp_path)], capsys)
    assert "does not exist" in err and "--root" in err
    assert "--box is for" in _error([str(IMAGE_NET), str(path), "--root", str(root), "--box", "1", "1", "5", "5"],
                                    capsys)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json is not a PoseTrack18" in _error([str(IMAGE_NET), str(bad), "--root", str(root)], capsys)


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box, says", [
    (["70", "5", "10", "10"], "lies outside the first frame (64 x 48 pixels)"),
    (["-40", "-40", "30", "30"], "lies outside"),
    (["10", "5", "0", "10"], "positive width and height"),
    (["10", "5", "10", "-3"], "positive width and height"),
])
def test_box_errors(folder, tmp_path, box, says, capsys):
    err = _error([str(IMAGE_NET), str(folder), "--box", *box, "--out", str(tmp_path / "o.mp4")], capsys)
    assert says in err
    assert not (tmp_path / "o.mp4").exists()


def test_input_errors(folder, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o.mp4")]
    assert "--box" in _error([str(IMAGE_NET), str(folder), *out], capsys)  # no box, no annotations
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} holds no" in _error([str(IMAGE_NET), str(empty), "--box", "1", "1", "5", "5", *out], capsys)
    missing = tmp_path / "nowhere.mp4"
    assert f"input not found: {missing}" in _error([str(IMAGE_NET), str(missing), "--box", "1", "1", "5", "5", *out],
                                                   capsys)
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    assert f"cannot read video {fake}" in _error([str(IMAGE_NET), str(fake), "--box", "1", "1", "5", "5", *out], capsys)
    broken = folder / "002.png"
    broken.write_bytes(b"not a png")
    assert str(broken) in _error([str(IMAGE_NET), str(folder), "--box", "1", "1", "5", "5", *out], capsys)
    assert "network not found" in _error([str(tmp_path / "best.pt"), str(folder), "--box", "1", "1", "5", "5", *out],
                                         capsys)
    bad_ckpt = tmp_path / "best.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    assert "cannot be read as a PyTorch checkpoint" in _error([str(bad_ckpt), str(empty.parent / "frames"), "--box",
                                                               "1", "1", "5", "5", *out], capsys)
    assert "--out" in _error([str(IMAGE_NET), str(folder), "--box", "1", "1", "5", "5", "--out",
                              str(tmp_path / "o.gif")], capsys)


# ---- helpers on hand-computed values ------------------------------------------------------------------------

class Peaks:
    """A stepper whose heatmaps (20 x 15 for a 40 x 30 input) hold single-pixel peaks of joints 0, 1, 2 at
    heatmap (u, v) = (7, 2), (3, 9), (11, 17) on the first step after a reset, 2 pixels further right after;
    every other joint's heatmap is zero. Records the affines it is given."""

    def __init__(self):
        self.t, self.affines = 0, []

    def reset(self):
        self.t = 0

    def step(self, image, affine):
        assert tuple(image.shape) == (1, 3, 40, 30)
        self.affines.append(affine[0].double().numpy())
        heat = torch.zeros(1, 17, 20, 15)
        shift = 2 if self.t else 0
        for k, (u, v) in enumerate([(7, 2), (3, 9), (11, 17)]):
            heat[0, k, v, u + shift] = 1.0
        self.t += 1
        return heat


def test_each_crop_comes_from_the_previous_prediction():
    """Frame 10: box [20, 8, 24, 32] has the input's aspect 30 / 40; x 1.25 -> a 30 x 40 crop around (32, 24),
    one image pixel per input pixel, its centre at input (14.5, 19.5). Heatmap (u, v) -> image
    (32 + 2 (u - 7), 24 + 2 (v - 9.5)): joints (32, 9), (24, 23), (40, 39).
    Frame 11: their box x 24..40, y 9..39 (16 x 30) -> 22.5 x 30 at aspect 0.75 -> x 1.25: 28.125 x 37.5 around
    (32, 24); 1.875 image pixels per heatmap pixel: joints (35.75, 9.9375), (28.25, 23.0625), (43.25, 38.0625).
    Frame 12: their box x 28.25..43.25, y 9.9375..38.0625 (15 x 28.125) around (35.75, 24) -> 21.09375 x
    28.125 -> x 1.25: 26.3671875 x 35.15625."""
    stepper = Peaks()
    image = np.zeros((H, W, 3), np.uint8)
    steps = follow_track(stepper, [(10, image), (11, image), (12, image)], [20, 8, 24, 32], (40, 30), track=7)
    assert [(s.frame, s.track, s.net) for s in steps] == [(10, 7, "image"), (11, 7, "image"), (12, 7, "image")]
    first, second, third = stepper.affines
    assert first @ [32, 24, 1] == pytest.approx([14.5, 19.5]) and first[0, 0] == pytest.approx(1.0)
    assert steps[0].keypoints[:3] == pytest.approx(np.array([[32, 9], [24, 23], [40, 39]]))
    assert steps[0].scores[:3] == pytest.approx([1, 1, 1]) and steps[0].scores[3:] == pytest.approx(0)
    assert second @ [32, 24, 1] == pytest.approx([14.5, 19.5], abs=1e-4)
    assert second[0, 0] == pytest.approx(30 / 28.125) and second[1, 1] == pytest.approx(40 / 37.5)
    assert steps[1].keypoints[:3] == pytest.approx(np.array([[35.75, 9.9375], [28.25, 23.0625], [43.25, 38.0625]]),
                                                   abs=1e-4)
    assert third @ [35.75, 24, 1] == pytest.approx([14.5, 19.5], abs=1e-4)
    assert third[0, 0] == pytest.approx(30 / 26.3671875, rel=1e-5)
    assert steps[2].center == pytest.approx([35.75, 24.0], abs=1e-4)
    assert steps[2].scale == pytest.approx([26.3671875, 35.15625], rel=1e-5)


def test_a_joint_is_drawn_at_its_rounded_pixel_only_above_the_threshold():
    """Joint 9 at (20.4, 30.6) scoring 0.9 -> a red dot centred on pixel (20, 31); joint 10 at (40, 30) scoring
    0.1 < 0.2 -> nothing there; no limb (no two sure joints). The crop box: centre (32, 24), 60 x 44 -> its
    left edge on column 2 from row 2 to row 46, in the track's colour."""
    picture = np.zeros((H, W, 3), np.uint8)
    keypoints, scores = np.zeros((17, 2)), np.zeros(17)
    keypoints[9], scores[9] = (20.4, 30.6), 0.9
    keypoints[10], scores[10] = (40.0, 30.0), 0.1
    step = Step(frame=0, track=0, center=np.array([32.0, 24.0]), scale=np.array([60.0, 44.0]), keypoints=keypoints,
                scores=scores, net="image", ms=1.0)
    draw_person(picture, step, (0, 255, 0), min_score=0.2)
    assert tuple(picture[31, 20]) == (0, 0, 255)  # row y, column x; BGR red
    assert tuple(picture[30, 40]) == (0, 0, 0)
    assert tuple(picture[24, 2]) == (0, 255, 0)
    assert not picture[5:44, 5:17].any() and not picture[5:44, 24:60].any()  # nothing else drawn inside the box
