"""PoseTrack18 annotations: per-video frame sequences, and COCO OKS evaluation of the labelled frames.

Layout: `root/annotations/{train,val}/<video>.json`, one COCO-like file per video. `images` carry `id`,
`vid_id`, `frame_id`, `nframes`, `is_labeled` and `file_name` (relative to root, e.g.
`images/val/000342_mpii_test/000000.jpg`); `annotations` carry `image_id`, `track_id`, `bbox` [x, y, w, h]
and 17 `keypoints` [x, y, v] in the COCO order, except that slots 1 and 2 are head_bottom and head_top
(not the eyes, so they are no flip pair) and the ears (3, 4) are never labelled (v = 0).

For COCO evaluation the labelled frames of all videos are merged into one in-memory ground truth. What
pycocotools needs and PoseTrack does not always give:
- `num_keypoints` = the number of keypoints with v > 0 (a person with none is ignored by COCOeval);
- `area` (the OKS scale s^2) = the box area w * h, as PoseTrack has no segmentation. COCO uses the
  segment area, which is smaller than the box, so OKS here is more lenient than on COCO for the same
  pixel error and the APs are not comparable across the two datasets;
- `iscrowd` = 0, `category_id` = 1, and annotation ids renumbered 1..M (ids repeat across video files);
- the OKS constants are COCO's (head_bottom/head_top take the eyes' 0.025; the ears never count).
Ignore regions (`ignore_regions_x/y`) are not used: predictions inside them count as false positives.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from nas.data.keypoints import COCO_SIGMAS
from nas.metrics.coco_eval import evaluate_keypoints

POSETRACK_KEYPOINTS: tuple[str, ...] = (
    "nose", "head_bottom", "head_top", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
POSETRACK_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)
POSETRACK_SIGMAS: tuple[float, ...] = COCO_SIGMAS


@dataclass
class TrackedPerson:
    """One annotated person in one frame."""
    track_id: int
    keypoints: np.ndarray  # (17, 3) [x, y, v] image pixels
    bbox: np.ndarray       # (4,) [x, y, w, h]


@dataclass
class Frame:
    """One frame of a video; only labelled frames carry (and are judged on) people."""
    image_id: int
    frame_id: int
    file_path: Path
    is_labeled: bool
    people: list[TrackedPerson] = field(default_factory=list)


@dataclass
class Video:
    """A video's frames in time order (by `frame_id`)."""
    vid_id: str
    name: str
    nframes: int
    frames: list[Frame]

    @property
    def labelled(self) -> list[Frame]:
        return [f for f in self.frames if f.is_labeled]


def _person(ann: dict) -> TrackedPerson:
    keypoints = np.asarray(ann.get("keypoints", [0.0] * 51), dtype=np.float32).reshape(-1, 3)
    return TrackedPerson(track_id=int(ann.get("track_id", -1)), keypoints=keypoints,
                         bbox=np.asarray(ann.get("bbox", _keypoint_box(keypoints)), dtype=np.float32))


def _keypoint_box(keypoints: np.ndarray) -> list[float]:
    """[x, y, w, h] around the labelled keypoints (for an annotation without a `bbox`)."""
    pts = keypoints[keypoints[:, 2] > 0, :2]
    if len(pts) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def read_video(path: str | Path, root: str | Path) -> Video:
    """One PoseTrack18 video file as a `Video` whose frames are ordered by `frame_id`."""
    data = json.loads(Path(path).read_text())
    images = sorted(data.get("images", []), key=lambda im: int(im["frame_id"]))
    if not images:
        raise ValueError(f"{path} lists no images")
    by_image: dict[int, list[TrackedPerson]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(_person(ann))
    frames = [Frame(image_id=int(im["id"]), frame_id=int(im["frame_id"]),
                    file_path=Path(root) / im["file_name"], is_labeled=bool(im.get("is_labeled", False)),
                    people=by_image.get(int(im["id"]), [])) for im in images]
    first = images[0]
    return Video(vid_id=str(first.get("vid_id", Path(path).stem)), name=Path(path).stem,
                 nframes=int(first.get("nframes", len(frames))), frames=frames)


def read_split(root: str | Path, split: str) -> list[Video]:
    """All videos of `root/annotations/<split>/*.json`, sorted by file name."""
    folder = Path(root) / "annotations" / split
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no PoseTrack annotation files in {folder} (expected <video>.json files)")
    return [read_video(f, root) for f in files]


def _gt_annotation(person: TrackedPerson, image_id: int, ann_id: int) -> dict:
    x, y, w, h = (float(v) for v in person.bbox)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(v) for v in person.keypoints.reshape(-1)],
            "num_keypoints": int((person.keypoints[:, 2] > 0).sum()),
            "bbox": [x, y, w, h], "area": w * h, "track_id": int(person.track_id)}


def labelled_ground_truth(videos: list[Video]) -> COCO:
    """One in-memory COCO ground truth holding the labelled frames of every video (see module doc)."""
    images, annotations, seen = [], [], set()
    for video in videos:
        for frame in video.labelled:
            if frame.image_id in seen:
                raise ValueError(f"image id {frame.image_id} appears twice (video {video.name})")
            seen.add(frame.image_id)
            images.append({"id": frame.image_id, "file_name": str(frame.file_path),
                           "vid_id": video.vid_id, "frame_id": frame.frame_id})
            for person in frame.people:
                annotations.append(_gt_annotation(person, frame.image_id, len(annotations) + 1))
    categories = [{"id": 1, "name": "person", "supercategory": "person",
                   "keypoints": list(POSETRACK_KEYPOINTS), "skeleton": []}]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_posetrack(videos: list[Video], results: list[dict]) -> dict[str, float]:
    """OKS AP/AR of COCO-format keypoint results on the labelled frames of `videos`.

    Results on unlabelled frames are dropped (there is nothing to judge them against); results naming an
    image that is in no video raise ValueError.
    """
    labelled = {f.image_id for v in videos for f in v.labelled}
    known = {f.image_id for v in videos for f in v.frames}
    unknown = {int(r["image_id"]) for r in results} - known
    if unknown:
        raise ValueError(f"results name image ids that are in no video: {sorted(unknown)[:10]}")
    kept = [r for r in results if int(r["image_id"]) in labelled]
    return evaluate_keypoints(labelled_ground_truth(videos), kept, sigmas=POSETRACK_SIGMAS)
