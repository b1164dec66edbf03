"""Kinematic 2-D person skeleton for the synthetic datasets: body proportions and joint limits.

A pose is built outward from the pelvis: torso lean, shoulder and hip abduction, elbow and knee bends
and head tilt are sampled inside plausible joint limits, limb lengths are fractions of the body height
with per-person variation. A person faces the camera or turns away; keypoints carry the person's
anatomical side, as in COCO, so a person facing the camera has its left joints on the image right.

Sampling and building are separate (`sample_params`, then `pose_from_params`) so that the video
generator can move the parameters over time; `sample_pose` is the two in a row, with the random draws
in the order the image generator has always made them (its output must not change).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from nas.data.keypoints import COCO_KEYPOINTS

# Segment lengths and half-widths as fractions of the standing height (pelvis to head top ~0.47,
# pelvis to sole ~0.50).
PROPORTIONS: dict[str, float] = {
    "torso": 0.30, "neck": 0.035, "head_radius": 0.068, "shoulder_half": 0.105, "hip_half": 0.07,
    "upper_arm": 0.175, "forearm": 0.155, "thigh": 0.24, "shin": 0.235,
}

# Joint limits in degrees. Abduction is measured from "hanging down" away from the body's midline;
# bends are signed because a 3-D flexion can project to either side in the image.
TORSO_LEAN = (-20.0, 20.0)
TORSO_LEAN_BENT = (-50.0, 50.0)          # occasional bending over
HEAD_TILT = (-25.0, 25.0)
YAW = (-55.0, 55.0)                      # turn about the vertical axis: narrows shoulders and hips
SHOULDER_ABDUCTION = ((-15.0, 60.0), (60.0, 120.0), (120.0, 170.0))
SHOULDER_ABDUCTION_P = (0.6, 0.25, 0.15)
ELBOW_FLEXION = ((0.0, 40.0), (40.0, 145.0))
HIP_ABDUCTION = ((-15.0, 30.0), (30.0, 70.0))
HIP_ABDUCTION_P = (0.75, 0.25)
KNEE_FLEXION = ((0.0, 20.0), (20.0, 110.0))
LEG_LEAN = (-10.0, 10.0)


@dataclass
class Pose:
    """One person's 2-D skeleton in pixel coordinates (x right, y down)."""
    keypoints: np.ndarray     # (17, 2) COCO order, anatomical sides
    head_center: np.ndarray   # (2,)
    head_radius: float
    facing_camera: bool
    height: float             # standing height in pixels, the scale every drawing size derives from
    head_up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0]))   # unit, chin -> crown

    def shifted(self, offset: np.ndarray) -> "Pose":
        """The same pose translated by `offset` (2,)."""
        return Pose(self.keypoints + offset, self.head_center + offset, self.head_radius,
                    self.facing_camera, self.height, self.head_up)

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) covering the joints, the head and a margin for limb width and feet."""
        margin = 0.06 * self.height
        pts = np.vstack([self.keypoints, self.head_center[None] - self.head_radius,
                         self.head_center[None] + self.head_radius])
        x0, y0 = pts.min(0) - margin
        x1, y1 = pts.max(0) + margin
        return float(x0), float(y0), float(x1), float(y1)


def rotate(v: np.ndarray, degrees: float) -> np.ndarray:
    """`v` rotated by `degrees`; in image coordinates a positive angle turns +x towards +y."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _pick(rng: np.random.Generator, ranges, probs=None) -> float:
    """A uniform sample from one of `ranges`, chosen with probabilities `probs` (equal if None)."""
    lo, hi = ranges[rng.choice(len(ranges), p=probs)]
    return float(rng.uniform(lo, hi))


def _signed(rng: np.random.Generator, ranges, probs=None) -> float:
    """Like `_pick`, with a random sign (for bends whose projection can go either way)."""
    return _pick(rng, ranges, probs) * (1.0 if rng.random() < 0.5 else -1.0)


def _foreshortening(rng: np.random.Generator, p: float, low: float) -> float:
    """Length factor of a segment pointing partly towards or away from the camera."""
    return float(rng.uniform(low, 1.0)) if rng.random() < p else 1.0


@dataclass
class LimbParams:
    """One arm or leg. Angles in degrees; `swing` is an extra image-plane turn of the whole limb (a walking
    stride), 0 in still images."""
    abduction: float          # of the shoulder or hip, away from the midline
    bend: float               # signed elbow or knee flexion
    upper_scale: float = 1.0  # foreshortening of the upper arm or thigh
    lower_scale: float = 1.0  # foreshortening of the forearm (a shin's follows from the knee bend)
    swing: float = 0.0


@dataclass
class PoseParams:
    """Everything `pose_from_params` needs besides the height; angles in degrees."""
    length_factors: dict[str, float]   # per PROPORTIONS entry, the person's variation (0.9..1.1)
    build: float                       # shoulder and hip width factor
    facing_camera: bool
    yaw: float
    lean: float                        # torso
    pelvis_tilt: float
    head_tilt: float
    leg_lean: float
    arms: dict[str, LimbParams]        # by anatomical side, "left" and "right"
    legs: dict[str, LimbParams]

    def copy(self) -> "PoseParams":
        """A copy whose limbs can be changed without touching this one."""
        return replace(self, length_factors=dict(self.length_factors),
                       arms={k: replace(v) for k, v in self.arms.items()},
                       legs={k: replace(v) for k, v in self.legs.items()})


def _sample_arm(rng: np.random.Generator) -> LimbParams:
    abduction = _pick(rng, SHOULDER_ABDUCTION, SHOULDER_ABDUCTION_P)
    upper = _foreshortening(rng, 0.3, 0.6)
    bend = _signed(rng, ELBOW_FLEXION)
    return LimbParams(abduction, bend, upper, _foreshortening(rng, 0.3, 0.6))


def _sample_leg(rng: np.random.Generator) -> LimbParams:
    abduction = _pick(rng, HIP_ABDUCTION, HIP_ABDUCTION_P)
    upper = _foreshortening(rng, 0.25, 0.5)
    return LimbParams(abduction, _signed(rng, KNEE_FLEXION, (0.7, 0.3)), upper)


def sample_params(rng: np.random.Generator) -> PoseParams:
    """Random plausible pose parameters, drawn in the image generator's historical order."""
    build = float(rng.uniform(0.85, 1.15))    # slimmer or broader shoulders and hips
    factors = {k: float(rng.uniform(0.9, 1.1)) for k in PROPORTIONS}
    facing = bool(rng.random() < 0.5)
    yaw = float(rng.uniform(*YAW))
    lean = _pick(rng, (TORSO_LEAN, TORSO_LEAN_BENT), (0.85, 0.15))
    pelvis_tilt, head_tilt = float(rng.uniform(-8.0, 8.0)), float(rng.uniform(*HEAD_TILT))
    leg_lean = float(rng.uniform(*LEG_LEAN))
    arms, legs = {}, {}
    for side in ("left", "right"):
        arms[side] = _sample_arm(rng)
        legs[side] = _sample_leg(rng)
    return PoseParams(factors, build, facing, yaw, lean, pelvis_tilt, head_tilt, leg_lean, arms, legs)


def _lengths(params: PoseParams, height: float) -> dict[str, float]:
    """Per-person segment lengths in pixels: proportions times height times the person's variation."""
    out = {k: v * height * params.length_factors[k] for k, v in PROPORTIONS.items()}
    out["shoulder_half"] *= params.build
    out["hip_half"] *= params.build
    return out


def _root_turn(limb: LimbParams, side_x: float) -> float:
    """Image-plane turn (degrees) of a limb's upper segment from its resting direction."""
    turn = -limb.abduction * side_x
    return turn + limb.swing if limb.swing else turn


def _arm(limb: LimbParams, shoulder, down, side_x, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and wrist of one arm; `side_x` is +1 when this side lies towards the image right."""
    upper = rotate(down, _root_turn(limb, side_x))
    elbow = shoulder + upper * lengths["upper_arm"] * limb.upper_scale
    fore = rotate(upper, limb.bend)
    wrist = elbow + fore * lengths["forearm"] * limb.lower_scale
    return elbow, wrist


def _leg(limb: LimbParams, hip, down, side_x, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Knee and ankle of one leg; hip flexion towards the camera shows as a shorter thigh."""
    thigh = rotate(down, _root_turn(limb, side_x))
    knee = hip + thigh * lengths["thigh"] * limb.upper_scale
    shin = rotate(thigh, limb.bend)
    shortening = 1.0 - 0.3 * abs(limb.bend) / KNEE_FLEXION[-1][1]
    ankle = knee + shin * lengths["shin"] * shortening
    return knee, ankle


def _face(center, radius, head_up, side_left, yaw) -> dict[str, np.ndarray]:
    """Nose, eyes and ears on a head of `radius`; the face slides sideways with the yaw."""
    lateral = rotate(head_up, 90.0)           # image-right direction of the head
    face_x = 0.5 * radius * np.sin(np.deg2rad(yaw))
    eye_dx = 0.36 * radius * np.cos(np.deg2rad(yaw)) * side_left
    return {
        "nose": center + lateral * face_x - head_up * 0.15 * radius,
        "left_eye": center + lateral * (face_x + eye_dx) + head_up * 0.2 * radius,
        "right_eye": center + lateral * (face_x - eye_dx) + head_up * 0.2 * radius,
        "left_ear": center + lateral * 0.92 * radius * side_left + head_up * 0.1 * radius,
        "right_ear": center - lateral * 0.92 * radius * side_left + head_up * 0.1 * radius,
    }


def pose_from_params(params: PoseParams, height: float) -> Pose:
    """The pose of a person `height` pixels tall with `params`, pelvis at the origin."""
    lengths = _lengths(params, height)
    side_left = 1.0 if params.facing_camera else -1.0     # image direction of the anatomical left
    width = max(np.cos(np.deg2rad(params.yaw)), 0.45)
    up, lateral = rotate(np.array([0.0, -1.0]), params.lean), rotate(np.array([1.0, 0.0]), params.lean)
    pelvis_lateral = rotate(lateral, params.pelvis_tilt)
    shoulder_mid = up * lengths["torso"]
    head_up = rotate(up, params.head_tilt)
    head_center = shoulder_mid + up * lengths["neck"] + head_up * lengths["head_radius"]
    joints = _face(head_center, lengths["head_radius"], head_up, side_left, params.yaw)
    leg_down = rotate(np.array([0.0, 1.0]), params.leg_lean + 0.2 * params.lean)
    for side, sx in (("left", side_left), ("right", -side_left)):
        shoulder = shoulder_mid + lateral * lengths["shoulder_half"] * width * sx
        hip = pelvis_lateral * lengths["hip_half"] * width * sx
        elbow, wrist = _arm(params.arms[side], shoulder, -up, sx, lengths)
        knee, ankle = _leg(params.legs[side], hip, leg_down, sx, lengths)
        joints.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                       f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})
    keypoints = np.stack([joints[name] for name in COCO_KEYPOINTS])
    return Pose(keypoints, head_center, lengths["head_radius"], params.facing_camera, height, head_up)


def sample_pose(rng: np.random.Generator, height: float) -> Pose:
    """A random plausible pose of a person `height` pixels tall, pelvis at the origin."""
    return pose_from_params(sample_params(rng), height)
