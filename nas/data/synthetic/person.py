"""Drawing a synthetic person: appearance, body parts, and a part-id map for honest visibility.

Left and right are decidable from the picture alone: left sleeves and trouser legs are always in a
warm (red-orange) colour family, right ones in a cool (blue) family, and the head shows a face (eyes,
nose, mouth under a hair rim) when the person faces the camera and only hair when it faces away.
Every part is drawn twice: anti-aliased into the image and as its part id into a label map, in the
same depth order, so the label map says which part of whom is seen at each pixel.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from nas.data.keypoints import COCO_KEYPOINTS
from nas.data.synthetic.skeleton import Pose, rotate

PARTS: tuple[str, ...] = (
    "head", "torso", "neck", "left_upper_arm", "left_forearm", "right_upper_arm", "right_forearm",
    "left_thigh", "left_shin", "right_thigh", "right_shin",
)
PART_ID: dict[str, int] = {name: i + 1 for i, name in enumerate(PARTS)}   # 0 = nothing drawn
LIMBS: dict[str, tuple[str, str]] = {   # part -> (start joint, end joint)
    **{f"{s}_upper_arm": (f"{s}_shoulder", f"{s}_elbow") for s in ("left", "right")},
    **{f"{s}_forearm": (f"{s}_elbow", f"{s}_wrist") for s in ("left", "right")},
    **{f"{s}_thigh": (f"{s}_hip", f"{s}_knee") for s in ("left", "right")},
    **{f"{s}_shin": (f"{s}_knee", f"{s}_ankle") for s in ("left", "right")},
}
_JOINT_PARTS = {"shoulder": ("torso", "{s}_upper_arm"), "elbow": ("{s}_upper_arm", "{s}_forearm"),
                "wrist": ("{s}_forearm",), "hip": ("torso", "{s}_thigh"),
                "knee": ("{s}_thigh", "{s}_shin"), "ankle": ("{s}_shin",)}


def _keypoint_parts(name: str) -> frozenset[int]:
    """Ids of the parts on which keypoint `name` can be seen (a joint is seen on either limb it joins)."""
    side, _, joint = name.partition("_")
    if joint in ("", "eye", "ear"):                     # nose, eyes, ears
        return frozenset({PART_ID["head"]})
    return frozenset(PART_ID[p.format(s=side)] for p in _JOINT_PARTS[joint])


KEYPOINT_PARTS: tuple[frozenset[int], ...] = tuple(_keypoint_parts(n) for n in COCO_KEYPOINTS)
LEFT_HUE, RIGHT_HUE = (-12.0, 22.0), (198.0, 232.0)     # degrees: red-orange vs blue
SHIFT = 4                                                # cv2 fixed-point bits: 1/16 px precision
_IDX = {name: i for i, name in enumerate(COCO_KEYPOINTS)}

Color = tuple[int, int, int]


def hsv_bgr(hue: float, sat: float, val: float) -> Color:
    """An OpenCV BGR colour from hue in degrees and saturation, value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, sat, val)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def neutral_color(rng: np.random.Generator) -> Color:
    """A colour that is neither a strong red-orange nor a strong blue (those mark left and right)."""
    if rng.random() < 0.35:
        return hsv_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.25), rng.uniform(0.1, 0.95))
    hue = rng.uniform(45.0, 180.0) if rng.random() < 0.65 else rng.uniform(255.0, 330.0)
    return hsv_bgr(hue, rng.uniform(0.15, 0.7), rng.uniform(0.15, 0.95))


@dataclass
class Look:
    """How one person is drawn: a colour and a width (px) per part, and extra colours."""
    colors: dict[str, Color]
    widths: dict[str, int]
    left_first: bool          # which arm and leg lies behind the other


def _side_colors(rng: np.random.Generator, side: str, hues: tuple[float, float]) -> dict[str, Color]:
    """Sleeve and trouser colours of one side. The elbow and knee show as a change of brightness:
    the forearm is darker than the upper arm, the shin lighter than the thigh (and than the shoe)."""
    out = {}
    for upper, lower, val, change in (("upper_arm", "forearm", (0.7, 0.97), (-0.4, -0.25)),
                                      ("thigh", "shin", (0.4, 0.65), (0.2, 0.32))):
        hue, sat, v = rng.uniform(*hues), rng.uniform(0.65, 1.0), rng.uniform(*val)
        out[f"{side}_{upper}"] = hsv_bgr(hue, sat, v)
        out[f"{side}_{lower}"] = hsv_bgr(hue + rng.uniform(-5, 5), sat, min(1.0, v + rng.uniform(*change)))
    return out


def sample_look(rng: np.random.Generator, height: float) -> Look:
    """Random clothing, skin and hair colours and limb widths for a person `height` px tall."""
    skin_val = rng.uniform(0.45, 0.95)
    colors = {**_side_colors(rng, "left", LEFT_HUE), **_side_colors(rng, "right", RIGHT_HUE),
              "torso": neutral_color(rng),
              "skin": hsv_bgr(rng.uniform(15, 35), rng.uniform(0.25, 0.6), skin_val),
              "hair": hsv_bgr(rng.uniform(15, 45), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.4)),
              "shoe": hsv_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.08, 0.35))}
    colors["neck"] = colors["skin"]
    arm, leg = height * rng.uniform(0.045, 0.065), height * rng.uniform(0.06, 0.085)
    widths = {}
    for side in ("left", "right"):
        widths.update({f"{side}_upper_arm": arm, f"{side}_forearm": 0.85 * arm,
                       f"{side}_thigh": leg, f"{side}_shin": 0.8 * leg})
    widths = {k: max(2, int(round(v))) for k, v in widths.items()}
    return Look(colors, widths, bool(rng.random() < 0.5))


def fixed_point(p) -> tuple[int, int]:
    """A point (x, y) in cv2 fixed-point coordinates (pass `shift=SHIFT` to the cv2 call)."""
    return int(round(p[0] * (1 << SHIFT))), int(round(p[1] * (1 << SHIFT)))


class _Painter:
    """Draws the same shape into the image (anti-aliased, in colour) and into the part map (as an id)."""

    def __init__(self, image: np.ndarray, part_map: np.ndarray):
        self.image, self.part_map = image, part_map

    def line(self, a, b, width: int, color: Color, part: int) -> None:
        cv2.line(self.image, fixed_point(a), fixed_point(b), color, width, cv2.LINE_AA, SHIFT)
        cv2.line(self.part_map, fixed_point(a), fixed_point(b), part, width, cv2.LINE_8, SHIFT)

    def circle(self, c, radius: float, color: Color, part: int | None) -> None:
        r = max(1, int(round(radius * (1 << SHIFT))))
        cv2.circle(self.image, fixed_point(c), r, color, -1, cv2.LINE_AA, SHIFT)
        if part is not None:
            cv2.circle(self.part_map, fixed_point(c), r, part, -1, cv2.LINE_8, SHIFT)

    def polygon(self, points, color: Color, part: int) -> None:
        pts = np.array([fixed_point(p) for p in points], dtype=np.int32)[None]
        cv2.fillPoly(self.image, pts, color, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.part_map, pts, part, cv2.LINE_8, SHIFT)


def _limb_pair(painter: _Painter, pose: Pose, look: Look, side: str, upper: str, lower: str) -> None:
    """One arm or leg: two segments meeting at the elbow/knee, with a hand or a foot at the end."""
    kp = pose.keypoints
    for part in (f"{side}_{upper}", f"{side}_{lower}"):
        a, b = (kp[_IDX[j]] for j in LIMBS[part])
        painter.line(a, b, look.widths[part], look.colors[part], PART_ID[part])
    a, b = (kp[_IDX[j]] for j in LIMBS[f"{side}_{lower}"])
    direction = (b - a) / max(np.linalg.norm(b - a), 1e-6)
    width, part = look.widths[f"{side}_{lower}"], PART_ID[f"{side}_{lower}"]
    if lower == "forearm":
        radius = 0.75 * width
        painter.circle(b + direction * 0.7 * radius, radius, look.colors["skin"], part)
    else:
        hip_mid = (kp[_IDX["left_hip"]] + kp[_IDX["right_hip"]]) / 2
        outward = 0.35 if kp[_IDX[f"{side}_hip"]][0] >= hip_mid[0] else -0.35
        foot = direction + np.array([outward, 0.0])   # toes point at (or away from) the camera
        painter.line(b, b + foot * 0.045 * pose.height, width, look.colors["shoe"], part)


def _torso(painter: _Painter, pose: Pose, look: Look) -> None:
    """The shirt (a quadrilateral from shoulders to hips) and the neck."""
    kp = pose.keypoints
    mid = (kp[_IDX["left_shoulder"]] + kp[_IDX["right_shoulder"]]) / 2
    corners = []
    for joint, part in (("left_shoulder", "left_upper_arm"), ("right_shoulder", "right_upper_arm"),
                        ("right_hip", "right_thigh"), ("left_hip", "left_thigh")):
        p = kp[_IDX[joint]]
        out = (p - mid) / max(np.linalg.norm(p - mid), 1e-6)
        corners.append(p + out * 0.4 * look.widths[part])
    neck_width = max(2, int(round(0.8 * pose.head_radius)))
    painter.line(mid, pose.head_center, neck_width, look.colors["skin"], PART_ID["neck"])
    painter.polygon(corners, look.colors["torso"], PART_ID["torso"])


def _head(painter: _Painter, pose: Pose, look: Look) -> None:
    """Hair all over from behind; from the front a face under a hair rim, with eyes, nose, mouth."""
    kp, c, r = pose.keypoints, pose.head_center, pose.head_radius
    head, skin = PART_ID["head"], look.colors["skin"]
    painter.circle(c, r, look.colors["hair"], head)
    if pose.facing_camera:
        up = (kp[_IDX["left_eye"]] + kp[_IDX["right_eye"]]) / 2 - kp[_IDX["nose"]]
        up /= max(np.linalg.norm(up), 1e-6)
        face_x = (kp[_IDX["nose"]] - c) @ rotate(up, 90.0)
        painter.circle(c - up * 0.2 * r + rotate(up, 90.0) * 0.4 * face_x, 0.8 * r, skin, None)
        for eye in ("left_eye", "right_eye"):
            painter.circle(kp[_IDX[eye]], max(0.7, 0.13 * r), (25, 20, 20), None)
        painter.circle(kp[_IDX["nose"]], max(0.7, 0.14 * r), (60, 70, 170), None)
        mouth = kp[_IDX["nose"]] - up * 0.35 * r
        side = rotate(up, 90.0) * 0.22 * r
        cv2.line(painter.image, fixed_point(mouth - side), fixed_point(mouth + side), (40, 40, 120), 1,
                 cv2.LINE_AA, SHIFT)
    for ear in ("left_ear", "right_ear"):
        painter.circle(kp[_IDX[ear]], 0.22 * r, skin, head)


def draw_person(image: np.ndarray, part_map: np.ndarray, pose: Pose, look: Look) -> None:
    """Paint `pose` into `image` (H, W, 3) BGR uint8 and its part ids into `part_map` (H, W) uint8.

    Depth order: facing the camera the arms are in front of the torso, facing away behind it.
    """
    painter = _Painter(image, part_map)
    sides = ("left", "right") if look.left_first else ("right", "left")
    for step in (("legs", "torso", "head", "arms") if pose.facing_camera
                 else ("legs", "arms", "torso", "head")):
        if step == "torso":
            _torso(painter, pose, look)
        elif step == "head":
            _head(painter, pose, look)
        else:
            upper, lower = ("thigh", "shin") if step == "legs" else ("upper_arm", "forearm")
            for side in sides:
                _limb_pair(painter, pose, look, side, upper, lower)
