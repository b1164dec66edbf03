"""The built-in synthetic video dataset, written in PoseTrack18's layout and cached on disk.

Each video films 1..max_people stick-figure people (the image generator's people, skeleton and scenery)
in a world larger than the frame. Everything moves smoothly and deterministically from the seed:
- the camera pans over the world and zooms slowly (a similarity transform per frame; people move with it);
- each person's pose parameters (joint angles, torso lean, head tilt, yaw), position and size follow
  slow sinusoids around the person's own values; walkers swing their legs and arms in a gait cycle and
  cross the frame, and some are placed to walk into or out of the view mid-video (a track that starts or
  ends early keeps its track_id);
- objects (boxes, posts, ellipses) stand or slide across the people, and walkers pass standers, so
  joints are hidden for a few frames and seen again.
The point is that a frame alone is ambiguous more often than a clip: a joint hidden now was often seen
a frame ago. `generate_video` measures that and returns it (see `_Stats`); the figures are also written
to `root/synthetic_video.json`.

Labels follow PoseTrack18 (nas/data/posetrack.py): 17 keypoints in POSETRACK_KEYPOINTS order, [x, y, v] in
frame pixels (pixel centres at integers). The nose and the body joints follow the image generator's rule
(`images.label_keypoints`: v=0 outside the frame or a face point seen from behind, v=2 where the joint's
pixel shows one of the person's own parts that the joint belongs to, else v=1); head_bottom and head_top are
the bottom and top of the head circle along the head's up direction, v=2 when the head (or, for
head_bottom, the neck) is seen a little inside the circle (HEAD_PROBE), as the circle's edge pixel itself
belongs to whatever surrounds the head; the ears are always (0, 0, 0), as in PoseTrack. A person is
annotated in a frame when at least MIN_LABELLED keypoints are in it, MIN_VISIBLE are seen and its box
(its whole silhouette inside the frame) is at least MIN_BOX pixels on each side; unlabelled frames (see
VideoSpec.label_every) carry no annotations, as in PoseTrack.

Layout (PoseTrack18's):
    root/annotations/{train,val}/<video>.json
    root/images/{train,val}/<video>/000000.jpg ...
    root/synthetic_video.json   (spec, generator version, statistics; written last: marks it complete)
Image ids follow PoseTrack's pattern 1VVVVVVFFFF (video number over both splits, frame), so they are unique
over the whole dataset; annotation ids are image_id * 100 + the person's index in the frame.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from nas.data.keypoints import COCO_SKELETON
from nas.data.posetrack import POSETRACK_KEYPOINTS
from nas.data.synthetic.cache import default_cache_dir, ensure_generated, spec_digest
from nas.data.synthetic.images import JPEG_QUALITY, OCCLUDER, OWNER_STRIDE, SPLITS, label_keypoints
from nas.data.synthetic.person import PART_ID, Look, draw_person, sample_look
from nas.data.synthetic.scenery import draw_background, paint_occluder, sample_occluder
from nas.data.synthetic.skeleton import Pose, PoseParams, pose_from_params, sample_params
from nas.errors import UserError

VIDEO_GENERATOR_VERSION = 1    # bump when the rendering or the files written change, so caches regenerate
VIDEO_STREAM = 11              # last seed word of a video's RNG, so videos draw apart from the image set
INFO_FILE = "synthetic_video.json"
WORLD_MARGIN = 1.5             # the world (background) is this much larger than a frame, per side
ZOOM_RANGE = (1.0, 1.35)       # frame pixels per world pixel
PAN_SPEED = 1.5                # most camera pan, frame pixels per frame for a 256-pixel-wide frame
HEIGHT_RANGE = (0.3, 0.8)      # person height as a fraction of the frame height, at the anchor frame
WALK_PROB = 0.5                # chance that a person not forced to enter or leave walks rather than stands
OVERLAP_PROB = 0.3             # chance that a standing person is placed beside an earlier one
WALK_SPEED = (0.02, 0.035)     # person heights per frame (a brisk walk at 30 frames per second)
OUTSIDE = 0.3                  # an entering/leaving pelvis is this many heights beyond the border
# below these a drawn person is left unannotated; one seen joint is enough (the image set asks two), as the
# frames around can place a person who is mostly behind something
MIN_LABELLED, MIN_VISIBLE, MIN_BOX = 3, 1, 8
HEAD_PROBE = 0.7               # head_top/bottom visibility is read at this fraction of the head radius
SLIDE_PROB = 0.6               # chance that an object over a walker slides (over someone standing: always)
SLIDE_SPEED = (0.03, 0.08)     # of a sliding object, in heights of the person it crosses per frame
CLIP_WINDOW = 3                # the statistics' clip: a frame and the 3 before it (data.clip_length 4)
BLUR_PROB = 0.3                # chance that a video is slightly out of focus
MAX_PEOPLE = 99                # annotation ids hold the person's index in two digits
_HEAD_BOTTOM, _HEAD_TOP, _EARS = 1, 2, (3, 4)
_SEEN, _HIDDEN_SELF, _HIDDEN_PERSON, _HIDDEN_OBJECT = 0, 1, 2, 3   # why a keypoint is (not) seen


@dataclass(frozen=True)
class VideoSpec:
    """What to generate; every field takes part in the cache key."""
    num_train: int = 40            # videos in the train split
    num_val: int = 10              # videos in the val split
    frames: int = 30               # frames per video
    image_size: tuple[int, int] = (256, 256)   # (H, W)
    max_people: int = 3            # 1..max_people tracks per video
    label_every: int = 1           # every k-th frame is labelled (1: all, PoseTrack val: 4) ...
    label_middle: int = 0          # ... and a run of this many consecutive frames in the middle
    enter_leave_prob: float = 0.35  # chance that a person walks into or out of the view mid-video
    max_occluders: int = 2         # 0..max_occluders objects per video, standing or sliding
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        checks = [
            ("image_size", len(self.image_size) == 2 and min(self.image_size) >= 32, "must be (H, W), both >= 32"),
            ("num_train", self.num_train >= 0, "must be >= 0"),
            ("num_val", self.num_val >= 0, "must be >= 0"),
            ("num_train", self.num_train + self.num_val < 1_000_000, "plus num_val must be below 1000000"),
            ("frames", 1 <= self.frames < 10_000, "must be between 1 and 9999"),
            ("max_people", 1 <= self.max_people <= MAX_PEOPLE, f"must be between 1 and {MAX_PEOPLE}"),
            ("label_every", self.label_every >= 1, "must be >= 1"),
            ("label_middle", 0 <= self.label_middle <= self.frames, "must be between 0 and frames"),
            ("enter_leave_prob", 0.0 <= self.enter_leave_prob <= 1.0, "must be between 0 and 1"),
            ("max_occluders", self.max_occluders >= 0, "must be >= 0"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {message}")

    def labelled(self, frame: int) -> bool:
        """Whether `frame` is labelled: every label_every-th frame and the middle run of label_middle."""
        start = (self.frames - self.label_middle) // 2
        return frame % self.label_every == 0 or start <= frame < start + self.label_middle


# ---- motion ---------------------------------------------------------------------------------------------

@dataclass
class _Wave:
    """amp * sin(2 pi t / period + phase): a slow, bounded, smooth oscillation."""
    amp: float
    period: float
    phase: float

    def __call__(self, t: float) -> float:
        return self.amp * math.sin(2 * math.pi * t / self.period + self.phase)


def _wave(rng: np.random.Generator, amp_max: float, periods: tuple[float, float] = (20.0, 60.0)) -> _Wave:
    return _Wave(float(rng.uniform(0, amp_max)), float(rng.uniform(*periods)), float(rng.uniform(0, 2 * math.pi)))


@dataclass
class _Camera:
    """Per frame, the world point at the frame centre and the zoom (frame pixels per world pixel)."""
    centers: np.ndarray    # (n, 2)
    zooms: np.ndarray      # (n,)
    frame_center: np.ndarray

    def to_frame(self, t: int, points: np.ndarray) -> np.ndarray:
        return (points - self.centers[t]) * self.zooms[t] + self.frame_center

    def to_world(self, t: int, points: np.ndarray) -> np.ndarray:
        return (points - self.frame_center) / self.zooms[t] + self.centers[t]

    def affine(self, t: int) -> np.ndarray:
        """The world -> frame affine of frame t (for cv2.warpAffine)."""
        z, (cx, cy), (fx, fy) = self.zooms[t], self.centers[t], self.frame_center
        return np.array([[z, 0.0, fx - z * cx], [0.0, z, fy - z * cy]])


def _sample_camera(rng: np.random.Generator, n: int, h: int, w: int, world: tuple[int, int]) -> _Camera:
    """A slow zoom (a sinusoid inside ZOOM_RANGE) and a pan at constant velocity plus a sway, held inside
    the world: the view stops where it would leave the background."""
    t = np.arange(n, dtype=np.float64)
    zoom_wave = _wave(rng, 0.12, (40.0, 120.0))
    zooms = np.clip(rng.uniform(*ZOOM_RANGE) + np.array([zoom_wave(s) for s in t]), *ZOOM_RANGE)
    speed, angle = rng.uniform(0, PAN_SPEED) * w / 256, rng.uniform(0, 2 * math.pi)
    sway = [_wave(rng, 0.05 * side, (30.0, 90.0)) for side in (w, h)]
    world_mid = (np.array([world[1], world[0]], dtype=np.float64) - 1) / 2
    frame_half = (np.array([w, h], dtype=np.float64) - 1) / 2
    room = world_mid[None] - frame_half[None] / zooms[:, None]        # (n, 2) most offset from the middle
    start = world_mid + rng.uniform(-1, 1, 2) * room[0]
    centers = start + np.outer(t, speed * np.array([math.cos(angle), math.sin(angle)]))
    centers += np.array([[sway[0](s), sway[1](s)] for s in t])
    centers = np.clip(centers, world_mid - room, world_mid + room)
    return _Camera(centers, zooms, frame_half)


@dataclass
class _Gait:
    """A walking cycle: legs swing in opposition, arms against their own side's leg, knees and elbows
    bend while their limb swings forward."""
    direction: float       # +1 walking towards the image right, -1 left
    period: float          # frames per stride (two steps)
    phase: float
    amp: float             # thigh swing, degrees

    def apply(self, p: PoseParams, t: float) -> None:
        phase = 2 * math.pi * t / self.period + self.phase
        d = self.direction
        for side, offset in (("left", 0.0), ("right", math.pi)):
            s, c = math.sin(phase + offset), math.cos(phase + offset)
            leg, arm = p.legs[side], p.arms[side]
            leg.swing = -d * self.amp * s                   # a positive turn moves a hanging limb to -x
            leg.bend = d * (4.0 + 45.0 * max(0.0, c) ** 2)  # the shin trails while the leg swings forward
            arm.swing = 0.6 * d * self.amp * s
            arm.bend = -d * (10.0 + 25.0 * max(0.0, -c) ** 2)


_LIMB_RANGES = {"arm": ((-20.0, 175.0), 150.0), "leg": ((-20.0, 75.0), 115.0)}  # abduction, most bend
_STAND_WAVES = {"lean": 6.0, "head_tilt": 10.0, "yaw": 15.0, "arm_abduction": 35.0, "arm_bend": 40.0,
                "leg_abduction": 10.0, "leg_bend": 20.0}
_WALK_WAVES = {"lean": 3.0, "head_tilt": 6.0, "yaw": 5.0, "arm_abduction": 6.0, "arm_bend": 0.0,
               "leg_abduction": 3.0, "leg_bend": 0.0}


@dataclass
class _Person:
    """One track: pose parameters and motion in world coordinates, as functions of the frame index."""
    track_id: int
    base: PoseParams
    look: Look
    look_height: float      # frame pixels the look's widths were drawn for
    height: float           # world pixels
    height_wave: _Wave      # relative size change (stepping nearer or further)
    anchor: np.ndarray      # world pelvis at frame anchor_t
    anchor_t: int
    velocity: np.ndarray    # world pixels per frame
    sway: tuple[_Wave, _Wave]
    waves: dict[str, _Wave]
    gait: _Gait | None

    def params(self, t: int) -> PoseParams:
        p, b, w = self.base.copy(), self.base, self.waves
        p.lean = float(np.clip(b.lean + w["lean"](t), -50.0, 50.0))
        p.head_tilt = float(np.clip(b.head_tilt + w["head_tilt"](t), -30.0, 30.0))
        p.yaw = float(np.clip(b.yaw + w["yaw"](t), -60.0, 60.0))
        for kind, limbs, base_limbs in (("arm", p.arms, b.arms), ("leg", p.legs, b.legs)):
            (low, high), most = _LIMB_RANGES[kind]
            for side, limb in limbs.items():
                bb = base_limbs[side]
                limb.abduction = float(np.clip(bb.abduction + w[f"{side}_{kind}_abduction"](t), low, high))
                bend = float(np.clip(abs(bb.bend) + w[f"{side}_{kind}_bend"](t), 0.0, most))
                limb.bend = math.copysign(bend, bb.bend)
        if self.gait is not None:
            self.gait.apply(p, t)
        return p

    def pelvis(self, t: int) -> np.ndarray:
        """World position of the pelvis at frame t."""
        return self.anchor + self.velocity * (t - self.anchor_t) + np.array([self.sway[0](t), self.sway[1](t)])

    def world_height(self, t: int) -> float:
        return self.height * (1.0 + self.height_wave(t))

    def at(self, t: int, camera: _Camera) -> tuple[Pose, Look]:
        """The pose and look of this person in frame t's pixels."""
        height = self.world_height(t) * camera.zooms[t]
        pose = pose_from_params(self.params(t), height).shifted(camera.to_frame(t, self.pelvis(t)))
        ratio = height / self.look_height
        widths = {k: max(2, int(round(v * ratio))) for k, v in self.look.widths.items()}
        return pose, Look(self.look.colors, widths, self.look.left_first)


def _walker_base(rng: np.random.Generator, base: PoseParams, direction: float) -> None:
    """Upright, arms and legs hanging, turned towards the walking direction (the gait moves the limbs)."""
    base.yaw = direction * float(rng.uniform(25.0, 55.0))
    base.lean, base.head_tilt = float(rng.uniform(-6.0, 6.0)), float(rng.uniform(-10.0, 10.0))
    for side in ("left", "right"):
        base.arms[side].abduction = float(rng.uniform(-5.0, 20.0))
        base.legs[side].abduction = float(rng.uniform(-4.0, 8.0))
        base.legs[side].upper_scale = 1.0


def _pelvis_row(rng: np.random.Generator, frame_height: float, h: int) -> float:
    """A pelvis row that shows the head and the feet when the person fits, else around the middle."""
    low, high = 0.5 * frame_height, h - 1 - 0.55 * frame_height
    if low > high:
        return (h - 1) / 2 + rng.uniform(-0.1, 0.1) * h
    return float(rng.uniform(low, high))


def _sample_person(rng: np.random.Generator, track_id: int, spec: VideoSpec, camera: _Camera,
                   placed: list[np.ndarray]) -> _Person:
    """A person whose anchor frame position is inside the view, beside someone, or (entering or leaving)
    just beyond the left or right border."""
    n, (h, w) = spec.frames, spec.image_size
    base = sample_params(rng)
    frame_height = float(rng.uniform(*HEIGHT_RANGE) * h)
    crossing = track_id > 0 and n >= 3 and rng.random() < spec.enter_leave_prob   # someone is there throughout
    walking = crossing or rng.random() < WALK_PROB
    direction = 1.0 if rng.random() < 0.5 else -1.0
    anchor_t, y = (n - 1) // 2, _pelvis_row(rng, frame_height, h)
    if crossing:
        entering = rng.random() < 0.5     # just beyond the border early on, or late (then gone)
        lo, hi = (0.1, 0.5) if entering else (0.5, 0.9)
        anchor_t = int(rng.integers(round(lo * (n - 1)), round(hi * (n - 1)) + 1))
        left_border = entering == (direction > 0)   # entering rightwards or leaving leftwards: the left side
        x = -OUTSIDE * frame_height if left_border else w - 1 + OUTSIDE * frame_height
    elif not walking and placed and rng.random() < OVERLAP_PROB:
        other = placed[int(rng.integers(len(placed)))]
        x = other[0] + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.6) * frame_height
    else:
        x = float(rng.uniform(0.1, 0.9) * (w - 1))
    zoom = camera.zooms[anchor_t]
    anchor_frame = np.array([x, y])
    placed.append(anchor_frame)
    if walking:
        _walker_base(rng, base, direction)
        speed = rng.uniform(*WALK_SPEED) * frame_height
        velocity = np.array([direction * speed, rng.uniform(-0.003, 0.003) * frame_height])
        gait = _Gait(direction, float(rng.uniform(24.0, 40.0)), float(rng.uniform(0, 2 * math.pi)),
                     float(rng.uniform(15.0, 28.0)))
        sway = (_Wave(0.0, 1.0, 0.0), _Wave(0.012 * frame_height, gait.period / 2, float(rng.uniform(0, 2 * math.pi))))
        amps = _WALK_WAVES
    else:
        velocity, gait = rng.normal(0.0, 0.003 * frame_height, 2), None
        sway = (_wave(rng, 0.04 * frame_height, (30.0, 90.0)), _wave(rng, 0.015 * frame_height, (30.0, 90.0)))
        amps = _STAND_WAVES
    waves = {k: _wave(rng, amps[k]) for k in ("lean", "head_tilt", "yaw")}
    for side in ("left", "right"):
        for key in ("arm_abduction", "arm_bend", "leg_abduction", "leg_bend"):
            waves[f"{side}_{key}"] = _wave(rng, amps[key])
    sway = tuple(_Wave(s.amp / zoom, s.period, s.phase) for s in sway)   # frame pixels -> world pixels
    return _Person(track_id, base, sample_look(rng, frame_height), frame_height, frame_height / zoom,
                   _wave(rng, 0.08, (40.0, 120.0)), camera.to_world(anchor_t, anchor_frame), anchor_t,
                   velocity / zoom, sway, waves, gait)


@dataclass
class _Occluder:
    """An object in world coordinates: standing still, or sliding at constant velocity."""
    corners: np.ndarray     # (N, 2) world pixels, relative to the centre
    color: tuple[int, int, int]
    anchor: np.ndarray      # world centre at frame anchor_t
    anchor_t: int
    velocity: np.ndarray

    def corners_at(self, t: int, camera: _Camera) -> np.ndarray:
        return camera.to_frame(t, self.anchor + self.velocity * (t - self.anchor_t) + self.corners)


def _sample_occluder(rng: np.random.Generator, people: list[_Person], n: int) -> _Occluder:
    """An object over a random person's body at a random frame: sliding across it (SLIDE_PROB), or
    standing where that person is at that frame (a walker passes behind it)."""
    person = people[int(rng.integers(len(people)))]
    anchor_t = int(rng.integers(n))
    height = person.world_height(anchor_t)
    center = person.pelvis(anchor_t) + np.array([0.0, rng.uniform(-0.35, 0.3) * height])
    corners, color = sample_occluder(rng, np.zeros(2), height * rng.uniform(0.25, 0.5))
    velocity = np.zeros(2)
    if person.gait is None or rng.random() < SLIDE_PROB:
        angle = rng.uniform(0, 2 * math.pi)
        velocity = rng.uniform(*SLIDE_SPEED) * height * np.array([math.cos(angle), math.sin(angle)])
    return _Occluder(corners, color, center, anchor_t, velocity)


# ---- one video ------------------------------------------------------------------------------------------

@dataclass
class _Scene:
    """Everything one video shows, drawn from the video's RNG before any frame is rendered."""
    world: np.ndarray
    camera: _Camera
    people: list[_Person]    # in drawing order: smaller (further) first
    occluders: list[_Occluder]
    blur: float              # Gaussian sigma, 0 = sharp


def _sample_scene(rng: np.random.Generator, spec: VideoSpec) -> _Scene:
    h, w = spec.image_size
    world_size = (int(math.ceil(h * WORLD_MARGIN)), int(math.ceil(w * WORLD_MARGIN)))
    world = draw_background(rng, *world_size)
    camera = _sample_camera(rng, spec.frames, h, w, world_size)
    placed: list[np.ndarray] = []
    people = [_sample_person(rng, i, spec, camera, placed) for i in range(int(rng.integers(1, spec.max_people + 1)))]
    occluders = [_sample_occluder(rng, people, spec.frames)
                 for _ in range(int(rng.integers(0, spec.max_occluders + 1)))]
    blur = float(rng.uniform(0.4, 1.0)) if rng.random() < BLUR_PROB else 0.0
    return _Scene(world, camera, sorted(people, key=lambda p: p.height), occluders, blur)


def posetrack_keypoints(pose: Pose, owner: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(17, 3) PoseTrack [x, y, v] of person `index` drawn into `owner` (module doc), and (17,) why each
    labelled keypoint is seen or hidden (_SEEN, _HIDDEN_SELF, _HIDDEN_PERSON, _HIDDEN_OBJECT)."""
    h, w = owner.shape
    out = label_keypoints(pose, owner, index)      # COCO order: nose and body joints as PoseTrack has them
    probes = pose.keypoints.copy()
    for slot, sign, parts in ((_HEAD_BOTTOM, -1.0, {PART_ID["head"], PART_ID["neck"]}),
                              (_HEAD_TOP, 1.0, {PART_ID["head"]})):
        point = pose.head_center + sign * pose.head_radius * pose.head_up
        probe = pose.head_center + sign * HEAD_PROBE * pose.head_radius * pose.head_up
        probes[slot] = np.clip(probe, 0, [w - 1, h - 1])
        out[slot] = 0.0
        if 0 <= point[0] <= w - 1 and 0 <= point[1] <= h - 1:
            o = int(owner[int(round(probes[slot][1])), int(round(probes[slot][0]))])
            seen = o != OCCLUDER and o // OWNER_STRIDE == index and o % OWNER_STRIDE in parts
            out[slot] = (point[0], point[1], 2 if seen else 1)
    out[list(_EARS)] = 0.0
    why = np.full(len(out), _SEEN)
    for k in np.flatnonzero(out[:, 2] == 1):
        o = int(owner[int(round(probes[k][1])), int(round(probes[k][0]))])
        why[k] = _HIDDEN_OBJECT if o == OCCLUDER else (
            _HIDDEN_PERSON if o != 0 and o // OWNER_STRIDE != index else _HIDDEN_SELF)
    return out, why


def _annotation(keypoints: np.ndarray, part_map: np.ndarray, pose: Pose) -> dict | None:
    """A PoseTrack annotation (without ids) of one drawn person, or None when too little of it shows."""
    x, y, bw, bh = cv2.boundingRect(part_map)
    labelled, visible = int((keypoints[:, 2] > 0).sum()), int((keypoints[:, 2] == 2).sum())
    if labelled < MIN_LABELLED or visible < MIN_VISIBLE or min(bw, bh) < MIN_BOX:
        return None
    flat = [v for kx, ky, kv in keypoints for v in (round(float(kx), 2), round(float(ky), 2), int(kv))]
    (cx, cy), r = pose.head_center, pose.head_radius
    head = [round(float(cx - r), 2), round(float(cy - r), 2), round(2 * float(r), 2), round(2 * float(r), 2)]
    return {"category_id": 1, "keypoints": flat, "num_keypoints": labelled,
            "bbox": [float(x), float(y), float(bw), float(bh)], "bbox_head": head}


@dataclass
class _Drawn:
    """One annotated person in one frame, with what the statistics need."""
    track_id: int
    annotation: dict
    keypoints: np.ndarray    # (17, 3)
    why: np.ndarray          # (17,)


def _render_frame(scene: _Scene, t: int, h: int, w: int) -> tuple[np.ndarray, list[_Drawn]]:
    """Frame t (H, W, 3) BGR uint8 and its annotated people."""
    image = cv2.warpAffine(scene.world, scene.camera.affine(t), (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
    owner = np.zeros((h, w), np.uint16)
    drawn = []
    for person in scene.people:
        pose, look = person.at(t, scene.camera)
        x0, y0, x1, y1 = pose.extent()
        if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
            continue                                   # wholly outside the frame
        part_map = np.zeros((h, w), np.uint8)
        draw_person(image, part_map, pose, look)
        mask = part_map > 0
        owner[mask] = person.track_id * OWNER_STRIDE + part_map[mask]
        drawn.append((person, pose, part_map))
    for occluder in scene.occluders:
        paint_occluder(image, owner, occluder.corners_at(t, scene.camera), occluder.color, OCCLUDER)
    if scene.blur:
        image = cv2.GaussianBlur(image, (0, 0), scene.blur)
    out = []
    for person, pose, part_map in drawn:
        keypoints, why = posetrack_keypoints(pose, owner, person.track_id)
        ann = _annotation(keypoints, part_map, pose)
        if ann is not None:
            out.append(_Drawn(person.track_id, ann, keypoints, why))
    return image, out


def video_name(number: int, split: str) -> str:
    """The folder and file name of video `number` (counted over both splits), PoseTrack style."""
    return f"{number:06d}_synthetic_{split}"


def image_id(number: int, frame: int) -> int:
    """PoseTrack's id pattern: 1, the six-digit video number, the four-digit frame index."""
    return 10_000_000_000 + number * 10_000 + frame


def posetrack_category() -> dict:
    """The `categories` entry of a PoseTrack18 annotation file (COCO's skeleton, PoseTrack's names)."""
    return {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(POSETRACK_KEYPOINTS),
            "skeleton": [list(s) for s in COCO_SKELETON]}


def _write_video(root: Path, spec: VideoSpec, split_index: int, index: int, stats: "_Stats") -> None:
    """Render one video's frames and write its annotation file."""
    split, (h, w), n = SPLITS[split_index], spec.image_size, spec.frames
    number = index + (spec.num_train if split_index else 0)
    name = video_name(number, split)
    scene = _sample_scene(np.random.default_rng([spec.seed, split_index, index, VIDEO_STREAM]), spec)
    (root / "images" / split / name).mkdir(parents=True, exist_ok=True)
    images, annotations, frames = [], [], []
    for t in range(n):
        image, people = _render_frame(scene, t, h, w)
        file_name = f"images/{split}/{name}/{t:06d}.jpg"
        cv2.imwrite(str(root / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        iid, labelled = image_id(number, t), spec.labelled(t)
        images.append({"id": iid, "vid_id": f"{number:06d}", "frame_id": t, "nframes": n, "is_labeled": labelled,
                       "file_name": file_name, "height": h, "width": w})
        if labelled:
            annotations += [{"id": iid * 100 + k, "image_id": iid, "track_id": p.track_id, **p.annotation}
                            for k, p in enumerate(people)]
        frames.append(people)
        stats.frame(people)
    stats.video(frames, scene.camera)
    doc = {"images": images, "annotations": annotations, "categories": [posetrack_category()]}
    path = root / "annotations" / split / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")))


# ---- statistics -----------------------------------------------------------------------------------------

class _Stats:
    """What makes the previous frame useful, counted over every rendered frame (labelled or not) and
    every annotated person; the ears (never labelled) do not count."""

    def __init__(self):
        self.c: dict[str, float] = dict.fromkeys((
            "videos", "frames", "person_frames", "keypoints", "hidden", "with_previous", "hidden_with_previous",
            "hidden_seen_before", "displacement_sum", "displacement_count", "relative_displacement_sum",
            "by_object", "by_person", "frames_object_over_person", "tracks", "entering", "leaving",
            "camera_pan_sum", "camera_pan_count", "hidden_after_first", "hidden_seen_in_clip"), 0.0)

    def frame(self, people: list[_Drawn]) -> None:
        c = self.c
        c["frames"] += 1
        c["person_frames"] += len(people)
        c["frames_object_over_person"] += any((p.why == _HIDDEN_OBJECT).any() for p in people)
        for p in people:
            v = p.keypoints[:, 2]
            c["keypoints"] += int((v > 0).sum())
            c["hidden"] += int((v == 1).sum())
            c["by_object"] += bool((p.why == _HIDDEN_OBJECT).any())
            c["by_person"] += bool((p.why == _HIDDEN_PERSON).any())

    def video(self, frames: list[list[_Drawn]], camera: _Camera) -> None:
        """Pairs of consecutive frames of one video: hidden-then-seen, joint displacement; and tracks."""
        c = self.c
        c["videos"] += 1
        spans: dict[int, list[int]] = {}
        for t, people in enumerate(frames):
            for p in people:
                spans.setdefault(p.track_id, []).append(t)
        by_frame = [{p.track_id: p for p in people} for people in frames]
        for t in range(1, len(frames)):
            for track_id, p in by_frame[t].items():
                if track_id in by_frame[t - 1]:
                    self._pair(by_frame[t - 1][track_id], p)
                self._window([by_frame[s].get(track_id) for s in range(max(0, t - CLIP_WINDOW), t)], p)
        c["tracks"] += len(spans)
        c["entering"] += sum(min(s) > 0 for s in spans.values())
        c["leaving"] += sum(max(s) < len(frames) - 1 for s in spans.values())
        pan = np.linalg.norm(np.diff(camera.centers * camera.zooms[:, None], axis=0), axis=1)
        c["camera_pan_sum"] += float(pan.sum())
        c["camera_pan_count"] += len(pan)

    def _pair(self, before: _Drawn, now: _Drawn) -> None:
        c = self.c
        v0, v1 = before.keypoints[:, 2], now.keypoints[:, 2]
        c["with_previous"] += int((v1 > 0).sum())
        c["hidden_with_previous"] += int((v1 == 1).sum())
        c["hidden_seen_before"] += int(((v1 == 1) & (v0 == 2)).sum())
        both = (v0 > 0) & (v1 > 0)
        step = np.linalg.norm(now.keypoints[both, :2] - before.keypoints[both, :2], axis=1)
        c["displacement_sum"] += float(step.sum())
        c["displacement_count"] += int(both.sum())
        c["relative_displacement_sum"] += float(step.sum()) / max(now.annotation["bbox"][3], 1.0)

    def _window(self, before: list[_Drawn | None], now: _Drawn) -> None:
        """Hidden keypoints of `now` seen in any of the frames `before` (a clip's earlier frames)."""
        hidden = now.keypoints[:, 2] == 1
        seen = np.zeros_like(hidden)
        for p in before:
            if p is not None:
                seen |= p.keypoints[:, 2] == 2
        self.c["hidden_after_first"] += int(hidden.sum())
        self.c["hidden_seen_in_clip"] += int((hidden & seen).sum())

    def summary(self) -> dict[str, float]:
        c = self.c

        def share(a: str, b: str) -> float:
            return round(c[a] / c[b], 4) if c[b] else 0.0

        return {
            "videos": int(c["videos"]), "frames": int(c["frames"]), "person_frames": int(c["person_frames"]),
            "tracks": int(c["tracks"]), "tracks_entering": int(c["entering"]), "tracks_leaving": int(c["leaving"]),
            "hidden_share": share("hidden", "keypoints"),
            "hidden_seen_before": share("hidden_seen_before", "with_previous"),
            "hidden_seen_before_of_hidden": share("hidden_seen_before", "hidden_with_previous"),
            "hidden_seen_in_clip_of_hidden": share("hidden_seen_in_clip", "hidden_after_first"),
            "joint_displacement_px": share("displacement_sum", "displacement_count"),
            "joint_displacement_per_box_height": share("relative_displacement_sum", "displacement_count"),
            "person_frames_hidden_by_object": share("by_object", "person_frames"),
            "person_frames_hidden_by_person": share("by_person", "person_frames"),
            "frames_object_over_person": share("frames_object_over_person", "frames"),
            "camera_pan_px": share("camera_pan_sum", "camera_pan_count"),
        }


STATS_HELP = {
    "hidden_share": "labelled keypoints that are hidden (v=1)",
    "hidden_seen_before": "labelled keypoints hidden now and seen (v=2) in the previous frame, of those whose "
                          "person was annotated in the previous frame",
    "hidden_seen_before_of_hidden": "of the hidden keypoints (person annotated in the previous frame), those seen "
                                    "in the previous frame",
    "hidden_seen_in_clip_of_hidden": f"of the hidden keypoints (not in a video's first frame), those seen in one "
                                     f"of the {CLIP_WINDOW} frames before",
    "joint_displacement_px": "mean distance a keypoint moves from one frame to the next, in pixels",
    "joint_displacement_per_box_height": "the same divided by the person's box height",
    "person_frames_hidden_by_object": "annotated people with a keypoint behind an object",
    "person_frames_hidden_by_person": "annotated people with a keypoint behind another person",
    "frames_object_over_person": "frames where an object hides a keypoint of someone",
    "camera_pan_px": "mean camera motion per frame, in frame pixels",
}


# ---- dataset --------------------------------------------------------------------------------------------

def generate_video(root: Path, spec: VideoSpec, progress: bool = True) -> dict[str, dict[str, float]]:
    """Write a complete PoseTrack-layout video dataset into root (created if missing); return, per split,
    the statistics of `_Stats` (also written to root/INFO_FILE, last)."""
    root, total, done = Path(root), spec.num_train + spec.num_val, 0
    stats = {}
    for split_index, count in enumerate((spec.num_train, spec.num_val)):
        split_stats = _Stats()
        for index in range(count):
            _write_video(root, spec, split_index, index, split_stats)
            done += 1
            if progress and (done == total or done % max(1, -(-total // 10)) == 0):
                print(f"  synthetic video data: {done}/{total} videos", flush=True)
        stats[SPLITS[split_index]] = split_stats.summary()
        if progress and count:
            s = stats[SPLITS[split_index]]
            print(f"  {SPLITS[split_index]}: {s['tracks']} tracks ({s['tracks_entering']} entering, "
                  f"{s['tracks_leaving']} leaving), hidden {s['hidden_share']:.1%} of keypoints, "
                  f"hidden now but seen a frame before {s['hidden_seen_before']:.1%}, "
                  f"joints move {s['joint_displacement_px']:.1f} px/frame", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    info = {"description": "posenas synthetic multi-person keypoint videos (PoseTrack18 layout)",
            "generator_version": VIDEO_GENERATOR_VERSION, "spec": asdict(spec), "stats": stats,
            "stats_help": STATS_HELP}
    (root / INFO_FILE).write_text(json.dumps(info, indent=1))
    return stats


def video_dataset_name(spec: VideoSpec) -> str:
    """The cache directory name of `spec`: generator version and a short hash of every field."""
    return f"synthetic-video-v{VIDEO_GENERATOR_VERSION}-{spec_digest(spec)}"


def _is_complete(root: Path) -> bool:
    return (root / INFO_FILE).is_file()


def ensure_synthetic_video(spec: VideoSpec, cache_dir: str | Path | None = None) -> Path:
    """Return the dataset root for spec, generating it on first use, reusing it afterwards (see `cache`)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    h, w = spec.image_size
    announce = (f"synthetic video data ({spec.num_train} train + {spec.num_val} val videos of {spec.frames} "
                f"frames, {h}x{w})")
    return ensure_generated(cache / video_dataset_name(spec), _is_complete,
                            lambda tmp: generate_video(tmp, spec), announce)


def synthetic_video_data(num_train: int = 40, num_val: int = 10, frames: int = 30,
                         image_size: Sequence[int] = (256, 256), max_people: int = 3, label_every: int = 1,
                         label_middle: int = 0, enter_leave_prob: float = 0.35, max_occluders: int = 2,
                         seed: int = 0, cache_dir: str | None = None,
                         input_size: Sequence[int] = (96, 72), heatmap_size: Sequence[int] = (24, 18),
                         sigma: float = 1.5, clip_length: int = 4, clip_stride: int | None = None,
                         max_train_clips: int | None = None, max_val_videos: int | None = None,
                         augment: dict | None = None, max_bad_fraction: float = 0.01,
                         splits: Sequence[str] = SPLITS):
    """The built-in synthetic video dataset, generated into the cache on first use, as
    `nas.data.build_video.posetrack_data` reads it (the arguments after cache_dir are passed on)."""
    from nas.data.build_video import posetrack_data
    try:
        spec = VideoSpec(num_train=num_train, num_val=num_val, frames=frames, image_size=tuple(image_size),
                         max_people=max_people, label_every=label_every, label_middle=label_middle,
                         enter_leave_prob=enter_leave_prob, max_occluders=max_occluders, seed=seed)
    except ValueError as err:
        raise UserError(f"data.{err}; change that setting") from None
    root = ensure_synthetic_video(spec, cache_dir)
    data = posetrack_data(root=str(root), input_size=input_size, heatmap_size=heatmap_size, sigma=sigma,
                          clip_length=clip_length, clip_stride=clip_stride, max_train_clips=max_train_clips,
                          max_val_videos=max_val_videos, augment=augment, max_bad_fraction=max_bad_fraction,
                          splits=splits)
    data.name = "synthetic_video"
    return data
