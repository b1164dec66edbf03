"""The built-in synthetic multi-person keypoint dataset, written in COCO format and cached on disk.

Each image holds 1..max_people stick-figure people (see `skeleton` for the kinematics and `person`
for the drawing) on a cluttered background, some overlapping, some cut by the
image border, some behind an occluding object. Labels follow COCO: a keypoint outside the image is
(0, 0, 0); one hidden behind another person, an object or the person's own body is v=1; one seen is
v=2. Hidden or seen is read from a map of who owns each pixel, filled while drawing, never guessed.
A person's box is that of its whole silhouette inside the image (not reduced by people or
objects in front of it); its area is a COCO-like share of the box (AREA_PER_BOX). Keypoints are in
pixel-index coordinates (pixel centres at integers, as COCO keypoints are usually read); a box
[x, y, w, h] covers pixel columns x .. x + w - 1.

Layout (mirrors COCO's `train2017/` and `annotations/person_keypoints_train2017.json`):
    root/annotations/person_keypoints_{train,val}.json
    root/{train,val}/000000000001.jpg ...
    root/person_detection_results/synthetic_{train,val}_detections.json   (see detections)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from nas.data.keypoints import NUM_COCO_KEYPOINTS, coco_category
from nas.data.synthetic.cache import default_cache_dir, ensure_generated, spec_digest
from nas.data.synthetic.detections import DETECTION_STREAM, DETECTIONS_FILE, detect
from nas.data.synthetic.person import KEYPOINT_PARTS, draw_person, sample_look
from nas.data.synthetic.scenery import draw_background, draw_occluder
from nas.data.synthetic.skeleton import Pose, sample_pose

GENERATOR_VERSION = 4          # bump when the rendering or the files written change, so caches regenerate
SPLITS = ("train", "val")
HEIGHT_RANGE = (0.3, 0.95)     # person height as a fraction of the image height
# `area` sets the OKS scale. Stick figures fill about 0.28 of their box where a COCO person's mask
# fills about 0.4 (0.405: mean over the 12 people of ../shared/data/coco_mini), so the pixel count
# would score the same relative error more harshly than COCO does; area = AREA_PER_BOX * box area.
AREA_PER_BOX = 0.4
OVERLAP_PROB = 0.25            # chance that a later person is placed beside an earlier one
OCCLUDER_PROB = 0.3            # chance that an image gets one or two occluding objects
MIN_LABELLED, MIN_VISIBLE, MIN_BOX = 3, 2, 8   # below these a drawn person is left unannotated
JPEG_QUALITY = 90
OWNER_STRIDE = 16              # owner map value = person index * OWNER_STRIDE + part id; 0 = background
OCCLUDER = int(np.iinfo(np.uint16).max)   # owner map value of an occluding object
_FACE = (0, 1, 2)              # nose and eyes: unlabelled on a person facing away, as in COCO


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every field takes part in the cache key."""
    num_train: int = 1600          # images in the train split
    num_val: int = 200             # images in the val split
    image_size: tuple[int, int] = (256, 256)   # (H, W)
    max_people: int = 4            # 1..max_people people per image
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ValueError(f"image_size must be (H, W) with both >= 32, got {self.image_size}")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("num_train and num_val must be >= 0")
        if not 1 <= self.max_people < OCCLUDER // OWNER_STRIDE:
            raise ValueError(f"max_people must be between 1 and {OCCLUDER // OWNER_STRIDE - 1}")


def _place(rng: np.random.Generator, pose: Pose, h: int, w: int, others: list) -> Pose:
    """Move `pose` into the image: beside someone (overlap), fully inside, or cut by the border."""
    x0, y0, x1, y1 = pose.extent()
    bw, bh = x1 - x0, y1 - y0
    if others and rng.random() < OVERLAP_PROB:
        ox0, oy0, ox1, oy1 = others[rng.integers(len(others))]
        cx = (ox0 + ox1) / 2 + rng.uniform(-0.6, 0.6) * (ox1 - ox0)
        cy = (oy0 + oy1) / 2 + rng.uniform(-0.15, 0.15) * (oy1 - oy0)
    elif rng.random() < 0.7 and bw <= w and bh <= h:
        cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
    else:
        cx, cy = rng.uniform(-0.2 * bw, w + 0.2 * bw), rng.uniform(-0.1 * bh, h + 0.1 * bh)
    return pose.shifted(np.array([cx - (x0 + x1) / 2, cy - (y0 + y1) / 2]))


def label_keypoints(pose: Pose, owner: np.ndarray, index: int) -> np.ndarray:
    """(17, 3) COCO [x, y, v]: v=0 outside the image (or a face point seen from behind), else v=2
    where the keypoint's pixel shows one of this person's parts that the joint belongs to, else v=1."""
    h, w = owner.shape
    out = np.zeros((NUM_COCO_KEYPOINTS, 3))
    for k, (x, y) in enumerate(pose.keypoints):
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1) or (k in _FACE and not pose.facing_camera):
            continue
        o = int(owner[int(round(y)), int(round(x))])
        seen = o != OCCLUDER and o // OWNER_STRIDE == index and o % OWNER_STRIDE in KEYPOINT_PARTS[k]
        out[k] = (x, y, 2 if seen else 1)
    return out


def _annotation(keypoints: np.ndarray, part_map: np.ndarray) -> dict | None:
    """A COCO annotation (without ids) for one drawn person, or None when too little of it shows.
    The box is that of its whole silhouette inside the image, before others covered it; the area is
    AREA_PER_BOX times the box area (see there)."""
    x, y, bw, bh = cv2.boundingRect(part_map)
    labelled, visible = int((keypoints[:, 2] > 0).sum()), int((keypoints[:, 2] == 2).sum())
    if labelled < MIN_LABELLED or visible < MIN_VISIBLE or min(bw, bh) < MIN_BOX:
        return None
    flat = [v for kx, ky, kv in keypoints for v in (round(float(kx), 2), round(float(ky), 2), int(kv))]
    return {"category_id": 1, "keypoints": flat, "num_keypoints": labelled,
            "bbox": [float(x), float(y), float(bw), float(bh)],
            "area": round(AREA_PER_BOX * bw * bh, 2), "iscrowd": 0}


def _occlude(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, poses: list) -> None:
    """Some images get one or two objects placed over a random body joint of someone."""
    if rng.random() >= OCCLUDER_PROB:
        return
    for _ in range(int(rng.integers(1, 3))):
        pose = poses[rng.integers(len(poses))]
        size = pose.height * rng.uniform(0.15, 0.35)
        center = pose.keypoints[rng.integers(5, NUM_COCO_KEYPOINTS)] + rng.uniform(-0.3, 0.3, 2) * size
        draw_occluder(rng, image, owner, center, size, OCCLUDER)


def render_scene(rng: np.random.Generator, height: int, width: int,
                 max_people: int) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) BGR uint8 and the COCO annotations (without ids) of its people."""
    image = draw_background(rng, height, width)
    owner = np.zeros((height, width), np.uint16)
    poses, part_maps, extents = [], [], []
    for index in range(int(rng.integers(1, max_people + 1))):
        person_h = rng.uniform(*HEIGHT_RANGE) * height
        pose = _place(rng, sample_pose(rng, person_h), height, width, extents)
        part_map = np.zeros((height, width), np.uint8)
        draw_person(image, part_map, pose, sample_look(rng, person_h))
        drawn = part_map > 0
        owner[drawn] = index * OWNER_STRIDE + part_map[drawn]
        poses.append(pose)
        part_maps.append(part_map)
        extents.append(pose.extent())
    _occlude(rng, image, owner, poses)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0))
    anns = [_annotation(label_keypoints(pose, owner, i), part_map)
            for i, (pose, part_map) in enumerate(zip(poses, part_maps))]
    return image, [a for a in anns if a is not None]


def _write_json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")))


def _write_split(root: Path, spec: SyntheticSpec, split_index: int, count: int, progress) -> None:
    """Render the images of one split and write its annotation and person-detection files."""
    split = SPLITS[split_index]
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    for i in range(count):
        rng = np.random.default_rng([spec.seed, split_index, i])
        image, anns = render_scene(rng, *spec.image_size, spec.max_people)
        image_id, file_name = i + 1, f"{i + 1:012d}.jpg"
        cv2.imwrite(str(root / split / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        images.append({"id": image_id, "file_name": file_name,
                       "height": spec.image_size[0], "width": spec.image_size[1]})
        first_id = len(annotations) + 1
        annotations += [{"id": first_id + j, "image_id": image_id, **a} for j, a in enumerate(anns)]
        detections += detect(np.random.default_rng([spec.seed, split_index, i, DETECTION_STREAM]), anns,
                             image_id, *spec.image_size)
        progress()
    info = {"description": "posenas synthetic multi-person keypoints", "split": split,
            "generator_version": GENERATOR_VERSION, "spec": asdict(spec)}
    doc = {"info": info, "images": images, "annotations": annotations, "categories": [coco_category()]}
    _write_json(root / DETECTIONS_FILE.format(split=split), detections)
    _write_json(root / "annotations" / f"person_keypoints_{split}.json", doc)  # last: marks it complete


def generate(root: Path, spec: SyntheticSpec, progress: bool = True) -> None:
    """Write a complete COCO-format dataset into root (created if missing)."""
    root, total, done = Path(root), spec.num_train + spec.num_val, [0]

    def tick() -> None:
        done[0] += 1
        if progress and (done[0] == total or done[0] % max(1, -(-total // 10)) == 0):
            print(f"  synthetic data: {done[0]}/{total} images", flush=True)

    for split_index, count in enumerate((spec.num_train, spec.num_val)):
        _write_split(root, spec, split_index, count, tick)


def dataset_name(spec: SyntheticSpec) -> str:
    """The cache directory name of `spec`: generator version and a short hash of every field."""
    return f"synthetic-v{GENERATOR_VERSION}-{spec_digest(spec)}"


def _is_complete(root: Path) -> bool:
    return all((root / "annotations" / f"person_keypoints_{s}.json").is_file() for s in SPLITS)


def ensure_synthetic(spec: SyntheticSpec, cache_dir: str | Path | None = None) -> Path:
    """Return the dataset root for spec, generating it on first use, reusing it afterwards (see `cache`)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    h, w = spec.image_size
    announce = (f"synthetic keypoint data ({spec.num_train} train + {spec.num_val} val images, {h}x{w})")
    return ensure_generated(cache / dataset_name(spec), _is_complete, lambda tmp: generate(tmp, spec), announce)
