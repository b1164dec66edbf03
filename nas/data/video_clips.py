"""Clips of one person's track over consecutive PoseTrack frames, for online (frame-by-frame) pose networks.

A clip is `clip_length` consecutive frames of ONE track (`track_id`) of one video. Frame 0 is the key frame;
each later frame t gets the heatmaps of frame t-1, which live in t-1's crop, resampled into t's own crop by
`warp_heatmaps` through the two crops' image -> input affines (the item's "affines").

Which clips exist (`find_clips`):
- a frame counts for a track when the frame is labelled and holds an annotation of that track with at least
  one labelled joint and a box of positive width and height (annotations failing this are counted in
  `dropped` by reason: "no_keypoints", "degenerate_box", "no_track"; a second annotation of a track already
  seen in the same frame is "duplicate_track");
- a run is a maximal stretch of frames that are adjacent in the video's time order (`frame_id` order; every
  frame of a PoseTrack video is listed, labelled or not) and that all count for the track. An unlabelled
  frame, or a labelled frame where the track is absent or unusable, ends the run;
- clips start at the run's first frame and every `clip_stride` frames after it (default `clip_length`: no
  frame in two clips), as long as the whole clip fits in the run. The last `(run - clip_length) % stride`
  frames of a run are then in no clip. PoseTrack18 labels ~30 consecutive frames per video (train and val;
  val also labels every 4th frame elsewhere, which makes runs of one frame and so no clips).

Each frame is cropped around its own ground-truth box (`box_to_center_scale` with `padding`, as the image
datasets do; the box is not clipped to the image, whose size the annotations do not give). In training ONE
augmentation draw (scale factor, rotation, flip; the distributions of TopDownDataset, no half-body) applies
to every frame of the clip, so the motion between frames stays the real one. The flip is folded into the
affine: "affines" always map the ORIGINAL image's pixels to the crop's input pixels (also when flipped),
while "centers"/"scales" are those of TopDownDataset's meta (with a flip, the centre in the mirrored image;
for decoding un-augmented crops only).
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nas.data.posetrack import (POSETRACK_FLIP_PAIRS, POSETRACK_KEYPOINTS, TrackedPerson, Video,
                                evaluate_posetrack)
from nas.data.topdown import InstanceRecord, UnreadableImageError, normalise, read_rgb
from nas.data.transforms import (affine_points, box_to_center_scale, flip_keypoints, generate_heatmaps,
                                 get_affine_transform)
from nas.errors import UserError

NUM_POSETRACK_KEYPOINTS = len(POSETRACK_KEYPOINTS)
DROP_REASONS = ("no_track", "no_keypoints", "degenerate_box", "duplicate_track")
AUGMENT_KEYS = ("scale_factor", "rot_factor", "rot_prob", "flip_prob", "padding")


@dataclass
class Clip:
    """`clip_length` consecutive frames of one track, in time order (one InstanceRecord per frame; its
    `ann_id` is the frame's index in `Video.frames`)."""
    video: str
    track_id: int
    frames: list[InstanceRecord]


def _usable(person: TrackedPerson, reasons: dict[str, int]) -> bool:
    """Whether an annotation can be a clip frame; counts the reason when not."""
    if person.track_id < 0:
        reasons["no_track"] += 1
    elif not (person.keypoints[:, 2] > 0).any():
        reasons["no_keypoints"] += 1
    elif not (person.bbox[2] > 0 and person.bbox[3] > 0):
        reasons["degenerate_box"] += 1
    else:
        return True
    return False


def track_runs(video: Video, aspect_ratio: float, padding: float,
               dropped: dict[str, int] | None = None) -> list[tuple[int, list[InstanceRecord]]]:
    """(track_id, frames) of every run of `video` (module doc), ordered by track id then time."""
    dropped = dropped if dropped is not None else dict.fromkeys(DROP_REASONS, 0)
    open_runs: dict[int, list[InstanceRecord]] = {}
    runs: list[tuple[int, list[InstanceRecord]]] = []
    for index, frame in enumerate(video.frames):
        here: dict[int, InstanceRecord] = {}
        for person in frame.people if frame.is_labeled else []:
            if not _usable(person, dropped):
                continue
            if person.track_id in here:
                dropped["duplicate_track"] += 1
                continue
            center, scale = box_to_center_scale(person.bbox, aspect_ratio, padding)
            here[person.track_id] = InstanceRecord(
                image_id=frame.image_id, ann_id=index, image_path=frame.file_path,
                box=person.bbox.astype(np.float32), center=center, scale=scale,
                keypoints=person.keypoints.astype(np.float32))
        for track in [t for t in open_runs if t not in here]:
            runs.append((track, open_runs.pop(track)))
        for track, record in here.items():
            open_runs.setdefault(track, []).append(record)
    runs += list(open_runs.items())
    return sorted(runs, key=lambda run: (run[0], run[1][0].ann_id))


def find_clips(videos: Sequence[Video], clip_length: int, clip_stride: int, aspect_ratio: float,
               padding: float = 1.25) -> tuple[list[Clip], dict[str, int]]:
    """Every clip of `videos` (module doc) in video, track, time order; and the dropped annotations by reason."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    clips = []
    for video in videos:
        for track, run in track_runs(video, aspect_ratio, padding, dropped):
            for start in range(0, len(run) - clip_length + 1, clip_stride):
                clips.append(Clip(video.name, track, run[start:start + clip_length]))
    return clips, dropped


def covered_videos(videos: Sequence[Video], clips: Iterable[Clip]) -> list[Video]:
    """Copies of `videos` whose labelled frames hold only the people that `clips` contain (frames with none
    become unlabelled): the ground truth that predictions made on those clips can be scored against."""
    covered: dict[int, set[int]] = {}
    for clip in clips:
        for record in clip.frames:
            covered.setdefault(int(record.image_id), set()).add(int(clip.track_id))
    result = []
    for video in videos:
        frames = []
        for frame in video.frames:
            tracks = covered.get(int(frame.image_id), set())
            people = [p for p in frame.people if p.track_id in tracks] if frame.is_labeled else []
            frames.append(replace(frame, is_labeled=bool(people), people=people))
        result.append(Video(video.vid_id, video.name, video.nframes, frames))
    return result


def unique_results(results: list[dict]) -> list[dict]:
    """The first result per (image_id, track_id) for results that carry a `track_id` (overlapping clips
    predict a frame's person more than once; a second copy would count as a false positive)."""
    seen, kept = set(), []
    for result in results:
        if "track_id" in result:
            key = (int(result["image_id"]), int(result["track_id"]))
            if key in seen:
                continue
            seen.add(key)
        kept.append(result)
    return kept


def _check_count(value: int | None, what: str, allow_none: bool = False) -> int | None:
    """`value` as an int >= 1 (or None where allowed); a UserError naming `what` otherwise."""
    if value is None and allow_none:
        return None
    if value is None or int(value) != value or int(value) < 1:
        raise UserError(f"{what} must be an integer >= 1{' or null' if allow_none else ''}, got {value}")
    return int(value)


class ClipDataset(Dataset):
    """Clips of PoseTrack videos (module doc), each as a dict of tensors (L = clip_length):
    images (L, 3, H, W), targets (L, K, h, w), target_weights (L, K, 1), affines (L, 2, 3) image -> input
    pixels, centers / scales (L, 2), image_ids (L,) int64, track_id, index (the clip's), flipped, rotation
    (the clip's one augmentation draw), and meta {"video": name, "skipped": unreadable paths, "" if none}.

    `max_clips` keeps that many clips spread evenly over the list (not the first ones, which would all come
    from the first videos). `evaluate(results)` scores COCO-format results on the people the clips hold.
    """

    primary_metric = "AP"

    def __init__(self, videos: Sequence[Video], input_size: Sequence[int] = (256, 192),
                 heatmap_size: Sequence[int] = (64, 48), sigma: float = 2.0, clip_length: int = 4,
                 clip_stride: int | None = None, train: bool = False, scale_factor: float = 0.35,
                 rot_factor: float = 45.0, rot_prob: float = 0.6, flip_prob: float = 0.5,
                 padding: float = 1.25, max_clips: int | None = None) -> None:
        self.videos = list(videos)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma, self.train, self.padding = float(sigma), bool(train), float(padding)
        self.clip_length = _check_count(clip_length, "data.clip_length")
        self.clip_stride = _check_count(clip_stride if clip_stride is not None else self.clip_length,
                                        "data.clip_stride")
        self.scale_factor, self.rot_factor = float(scale_factor), float(rot_factor)
        self.rot_prob, self.flip_prob = float(rot_prob), float(flip_prob)
        self.num_keypoints = NUM_POSETRACK_KEYPOINTS
        self.flip_pairs = POSETRACK_FLIP_PAIRS
        aspect_ratio = self.input_size[1] / self.input_size[0]
        self.clips, self.dropped = find_clips(self.videos, self.clip_length, self.clip_stride, aspect_ratio,
                                              self.padding)
        max_clips = _check_count(max_clips, "max_clips", allow_none=True)
        if max_clips is not None and max_clips < len(self.clips):
            keep = np.linspace(0, len(self.clips), max_clips, endpoint=False).astype(int)
            self.clips = [self.clips[i] for i in keep]

    def __len__(self) -> int:
        return len(self.clips)

    def restricted(self, videos: Sequence[Video], train: bool | None = None) -> "ClipDataset":
        """The same settings over `videos` only (every clip of them: no `max_clips` cap), e.g. the training
        videos a search keeps for the weights; `train` switches augmentation on or off."""
        other = copy.copy(self)
        other.videos, other.train = list(videos), self.train if train is None else bool(train)
        aspect_ratio = self.input_size[1] / self.input_size[0]
        other.clips, other.dropped = find_clips(other.videos, self.clip_length, self.clip_stride, aspect_ratio,
                                                self.padding)
        return other

    def __getitem__(self, index: int) -> dict:
        if self.train:  # a clip with an unreadable frame is skipped for the next clip (nas.data.bad_images)
            index, images, skipped = self._read_or_next(index)
        else:  # evaluation: an unreadable frame is an error naming the file
            images, skipped = [_read(r.image_path) for r in self.clips[index].frames], ""
        clip = self.clips[index]
        scale_mult, rot, flip = self._draw() if self.train else (1.0, 0.0, False)
        frames = [self._frame(image, record, scale_mult, rot, flip) for image, record in zip(images, clip.frames)]
        item = {key: torch.from_numpy(np.stack([f[key] for f in frames])) if key != "images"
                else torch.stack([f[key] for f in frames]) for key in frames[0]}
        item.update(image_ids=torch.tensor([int(r.image_id) for r in clip.frames], dtype=torch.int64),
                    track_id=torch.tensor(int(clip.track_id)), index=torch.tensor(int(index)),
                    flipped=torch.tensor(bool(flip)), rotation=torch.tensor(float(rot), dtype=torch.float32),
                    meta={"video": clip.video, "skipped": skipped})
        return item

    def _draw(self) -> tuple[float, float, bool]:
        """One augmentation draw (scale factor, rotation in degrees, flip) for a whole clip, from torch's RNG,
        with TopDownDataset's distributions."""
        sf, rf = self.scale_factor, self.rot_factor
        scale_mult = float(np.clip(1.0 + torch.randn(()).item() * sf, 1.0 - sf, 1.0 + sf))
        rot = float(np.clip(torch.randn(()).item() * rf, -2.0 * rf, 2.0 * rf))
        if torch.rand(()).item() >= self.rot_prob:
            rot = 0.0
        flip = torch.rand(()).item() < self.flip_prob
        return scale_mult, rot, bool(flip)

    def _frame(self, image: np.ndarray, record: InstanceRecord, scale_mult: float, rot: float,
               flip: bool) -> dict:
        """One frame's crop, targets and geometry under the clip's augmentation draw."""
        keypoints, center = record.keypoints.copy(), record.center.copy()
        scale = (record.scale * scale_mult).astype(np.float32)
        mirror = np.eye(3)
        if flip:  # as TopDownDataset mirrors the image, but folded into the affine (no image copy)
            width = image.shape[1]
            keypoints = flip_keypoints(keypoints, width, self.flip_pairs)
            center = np.array([width - 1 - center[0], center[1]], dtype=np.float32)
            mirror[0] = [-1.0, 0.0, width - 1.0]
        crop_mat = get_affine_transform(center, scale, rot, self.input_size)
        mat = crop_mat @ mirror  # original image pixels -> input pixels
        height, width = self.input_size
        crop = cv2.warpAffine(image, mat, (width, height), flags=cv2.INTER_LINEAR)
        keypoints[:, :2] = affine_points(keypoints[:, :2], crop_mat)
        target, weight = generate_heatmaps(keypoints, self.input_size, self.heatmap_size, self.sigma)
        return {"images": normalise(crop), "targets": target, "target_weights": weight,
                "affines": mat.astype(np.float32), "centers": center.astype(np.float32), "scales": scale}

    def _read_or_next(self, index: int) -> tuple[int, list[np.ndarray], str]:
        """(clip used, its frames, skipped paths): clip `index`, else the next clip whose frames all read."""
        skipped: list[str] = []
        for step in range(len(self.clips)):
            current = (index + step) % len(self.clips)
            try:
                return current, [_read(r.image_path) for r in self.clips[current].frames], "\n".join(skipped)
            except UnreadableImageError as err:
                skipped.append(str(err.path))
        raise UserError(f"no training clip has all its frames readable (first unreadable: {skipped[0]}); "
                        "check data.root and the image folders")

    def evaluate(self, results: list[dict]) -> dict[str, float]:
        """OKS AP/AR of COCO-format results on the people these clips hold (`covered_videos`); results with a
        `track_id` are kept once per frame and track (`unique_results`)."""
        return evaluate_posetrack(covered_videos(self.videos, self.clips), unique_results(results))


def crop_image(image: np.ndarray, center: Sequence[float], scale: Sequence[float],
               input_size: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    """An online frame's network input: the unrotated crop of `scale` (w, h) image pixels around `center`
    of an (H0, W0, 3) uint8 RGB image, normalised (3, H, W), and its image -> input affine (2, 3) float32,
    as the clip items give them (for `warp_heatmaps` and for decoding with `center`/`scale`)."""
    size = (int(input_size[0]), int(input_size[1]))
    mat = get_affine_transform(center, scale, 0.0, size)
    crop = cv2.warpAffine(image, mat, (size[1], size[0]), flags=cv2.INTER_LINEAR)
    return normalise(crop), mat.astype(np.float32)


def _read(path: Path) -> np.ndarray:
    """read_rgb, with the failing path on the error (`err.path`) so callers can name the file."""
    try:
        return read_rgb(path)
    except UnreadableImageError as err:
        err.path = path
        raise


def _homogeneous(affines: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) -> (B, 3, 3) with the row [0, 0, 1]."""
    last = affines.new_tensor([0.0, 0.0, 1.0]).expand(affines.shape[0], 1, 3)
    return torch.cat([affines, last], dim=1)


def warp_heatmaps(heat: torch.Tensor, src_affines: torch.Tensor, dst_affines: torch.Tensor,
                  input_size: Sequence[int], heatmap_size: Sequence[int]) -> torch.Tensor:
    """Heatmaps `heat` (B, K, h', w') of frame t-1, in t-1's crop, resampled into frame t's crop (B, K, h, w).

    `src_affines` / `dst_affines` (B, 2, 3) map image pixels to the input pixels of the two crops (the
    clip item's "affines"); both crops are `input_size` = (H, W) and the output is `heatmap_size` = (h, w).
    With `align_corners=False`, input pixel x of a crop W pixels wide sits at the normalised coordinate
    (2x + 1) / W - 1 of both the input and any heatmap of that crop (the pixel-centre convention of
    nas.data.transforms), so one affine, N @ A_src @ A_dst^-1 @ N^-1, takes each output pixel to its place in
    the source heatmap, sampled bilinearly. Points outside the source crop get 0. Differentiable in `heat`
    (and in the affines); the sampling runs in float32 and the result comes back in `heat`'s dtype.
    """
    height, width = int(input_size[0]), int(input_size[1])
    out_h, out_w = int(heatmap_size[0]), int(heatmap_size[1])
    batch = heat.shape[0]
    if src_affines.shape != (batch, 2, 3) or dst_affines.shape != (batch, 2, 3):
        raise ValueError(f"affines must be ({batch}, 2, 3), got {tuple(src_affines.shape)} and "
                         f"{tuple(dst_affines.shape)}")
    src = _homogeneous(src_affines.to(heat.device, torch.float32))
    dst = _homogeneous(dst_affines.to(heat.device, torch.float32))
    norm = src.new_tensor([[2.0 / width, 0.0, 1.0 / width - 1.0],
                           [0.0, 2.0 / height, 1.0 / height - 1.0],
                           [0.0, 0.0, 1.0]]).expand(batch, 3, 3)
    theta = norm @ src @ torch.linalg.inv(dst) @ torch.linalg.inv(norm)
    grid = F.affine_grid(theta[:, :2], [batch, heat.shape[1], out_h, out_w], align_corners=False)
    warped = F.grid_sample(heat.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.to(heat.dtype)


def box_from_keypoints(coords: np.ndarray, scores: np.ndarray, min_score: float, aspect_ratio: float,
                       expand: float = 1.25, previous: tuple[np.ndarray, np.ndarray] | None = None,
                       min_joints: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Centre and crop size (w, h) for the next frame's crop from this frame's predicted joints.

    The box around the joints scoring >= `min_score` (image pixels), grown to `aspect_ratio` (W / H of the
    input) and multiplied by `expand`, as `box_to_center_scale` does with ground-truth boxes. With fewer
    than `min_joints` such joints, or all of them on one point, the person is not found well enough to
    move the crop: `previous` (center, scale) is returned as it was (ValueError without one). Note that a
    box around joints is tighter than PoseTrack's person boxes, which also hold the head and limbs' extent.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    sure = coords[(scores >= min_score) & np.isfinite(coords).all(axis=1)]
    if len(sure) >= max(int(min_joints), 1):
        (x1, y1), (x2, y2) = sure.min(axis=0), sure.max(axis=0)
        if x2 > x1 or y2 > y1:
            return box_to_center_scale([x1, y1, x2 - x1, y2 - y1], aspect_ratio, expand)
    if previous is None:
        raise ValueError(f"only {len(sure)} joints score >= {min_score} (need {min_joints}) and there is "
                         "no previous box to fall back to")
    center, scale = previous
    return np.asarray(center, np.float32).copy(), np.asarray(scale, np.float32).copy()


def video_counts(videos: Sequence[Video]) -> dict[str, int]:
    """videos, frames, labelled frames, tracks (distinct track ids per video, over the people of labelled
    frames) and instances (people annotated in labelled frames) of `videos`."""
    labelled = [(video.name, frame) for video in videos for frame in video.labelled]
    return {"videos": len(videos), "frames": sum(len(v.frames) for v in videos),
            "labelled_frames": len(labelled),
            "tracks": len({(name, p.track_id) for name, frame in labelled for p in frame.people}),
            "instances": sum(len(frame.people) for _, frame in labelled)}
