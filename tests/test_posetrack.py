"""PoseTrack18: per-video frame order, labelled-only evaluation, and OKS AP on hand-built video files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from nas.data.keypoints import COCO_SIGMAS
from nas.data.posetrack import (POSETRACK_FLIP_PAIRS, POSETRACK_KEYPOINTS, evaluate_posetrack,
                                labelled_ground_truth, read_split)

BOX_W, BOX_H = 100.0, 200.0  # every person's box: area 20000, the OKS scale


def _keypoints(x0: float, y0: float) -> list[float]:
    """17 keypoints inside the box at (x0, y0); the ears (3, 4) unlabelled, as PoseTrack marks them."""
    values = []
    for k in range(17):
        labelled = k not in (3, 4)
        values += [x0 + 5 + 5 * k, y0 + 10 + 10 * k, 1 if labelled else 0] if labelled else [0, 0, 0]
    return values


def _write_video(root: Path, name: str, vid: int, labelled: list[bool], order: list[int]) -> None:
    """One video file in the PoseTrack18 format, its images listed in `order` (not time order),
    with tiny jpgs; labelled frames hold two people far apart (track ids 0 and 1), no area/num_keypoints."""
    images, annotations = [], []
    for frame in order:
        image_id = 10000000000 + vid * 10000 + frame
        file_name = f"images/val/{name}/{frame:06d}.jpg"
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / file_name), np.zeros((8, 8, 3), dtype=np.uint8))
        images.append({"id": image_id, "frame_id": image_id, "vid_id": f"{vid:06d}", "file_name": file_name,
                       "nframes": len(labelled), "is_labeled": labelled[frame], "has_no_densepose": True})
        if labelled[frame]:
            for track, x0 in ((0, 10.0), (1, 400.0)):
                annotations.append({"id": len(annotations), "image_id": image_id, "track_id": track,
                                    "category_id": 1, "bbox": [x0, 20.0, BOX_W, BOX_H],
                                    "keypoints": _keypoints(x0, 20.0)})
    (root / "annotations" / "val").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": list(POSETRACK_KEYPOINTS)}]}
    (root / "annotations" / "val" / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture
def videos(tmp_path):
    # Video 1: 4 frames listed as 2, 0, 3, 1; frames 0 and 2 labelled. Video 2: 3 frames, only 1 labelled.
    # Note that both files number their annotations from 0: the merged ground truth must renumber them.
    _write_video(tmp_path, "000002_bonn", 2, [False, True, False], [1, 2, 0])
    _write_video(tmp_path, "000001_mpii_test", 1, [True, False, True, False], [2, 0, 3, 1])
    return read_split(tmp_path, "val")


def _results(videos, shift=(0.0, 0.0), frames="labelled") -> list[dict]:
    """Every GT person of the chosen frames as a prediction, keypoints moved by `shift`."""
    results = []
    for video in videos:
        for frame in video.frames:
            people = frame.people if frame.is_labeled else [p for v in videos for p in v.labelled[0].people]
            if frames == "labelled" and not frame.is_labeled:
                continue
            for person in people:
                kpts = person.keypoints.copy()
                kpts[:, :2] += shift
                kpts[:, 2] = 1.0
                results.append({"image_id": frame.image_id, "category_id": 1, "score": 1.0,
                                "keypoints": kpts.reshape(-1).tolist()})
    return results


def test_frames_come_out_ordered_per_video(videos):
    assert [v.name for v in videos] == ["000001_mpii_test", "000002_bonn"]
    first, second = videos
    assert [f.frame_id % 10000 for f in first.frames] == [0, 1, 2, 3]
    assert [f.is_labeled for f in first.frames] == [True, False, True, False]
    assert [f.frame_id % 10000 for f in second.frames] == [0, 1, 2]
    assert [f.file_path.name for f in first.frames] == ["000000.jpg", "000001.jpg", "000002.jpg",
                                                       "000003.jpg"]
    assert all(f.file_path.is_file() for v in videos for f in v.frames)
    assert [p.track_id for p in first.frames[2].people] == [0, 1] and first.frames[1].people == []
    assert (first.vid_id, first.nframes) == ("000001", 4)


def test_ground_truth_holds_labelled_frames_only_with_computed_fields(videos):
    gt = labelled_ground_truth(videos)
    expected = {10000010000, 10000010002, 10000020001}
    assert set(gt.getImgIds()) == expected
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) == 6 and len({a["id"] for a in anns}) == 6
    assert all(a["num_keypoints"] == 15 for a in anns)  # 17 minus the two unlabelled ears
    assert all(a["area"] == BOX_W * BOX_H and a["iscrowd"] == 0 for a in anns)


def test_gt_as_predictions_gives_ap_one_and_unlabelled_frames_are_ignored(videos):
    # Predictions on unlabelled frames (copies of real people) would be false positives if they were
    # judged; they are dropped, so the AP stays 1.
    stats = evaluate_posetrack(videos, _results(videos, frames="all"))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_shifted_predictions_give_the_hand_computed_ap(videos):
    # Every keypoint moved by (3, 4): d = 5 px. OKS = mean over the 15 labelled joints of
    # exp(-d^2 / (2 * area * (2 sigma)^2)) with area 20000 = 0.937 (computed below from the formula, not
    # from pycocotools). Every person has this OKS, so each threshold 0.50, 0.55, ..., 0.95 gives AP 1
    # when OKS >= t and 0 otherwise: 0.50 ... 0.90 pass, 0.95 fails -> AP = 9 / 10.
    sigmas = np.delete(np.array(COCO_SIGMAS), [3, 4])
    oks = np.exp(-25.0 / (2 * BOX_W * BOX_H * (2 * sigmas) ** 2)).mean()
    assert 0.90 < oks < 0.95
    stats = evaluate_posetrack(videos, _results(videos, shift=(3.0, 4.0)))
    assert stats["AP"] == pytest.approx(0.9)


def test_results_on_unknown_images_are_refused(videos):
    bad = _results(videos)[:1]
    bad[0]["image_id"] = 123
    with pytest.raises(ValueError, match="in no video"):
        evaluate_posetrack(videos, bad)


def test_flip_pairs_are_left_right_and_skip_the_head_joints():
    for a, b in POSETRACK_FLIP_PAIRS:
        assert POSETRACK_KEYPOINTS[a].replace("left", "right") == POSETRACK_KEYPOINTS[b]
    assert not any({1, 2} & set(pair) for pair in POSETRACK_FLIP_PAIRS)
