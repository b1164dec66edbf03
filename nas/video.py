"""python -m nas.video NETWORK INPUT [options]  ->  <input>_pose.mp4: a pose network run online over a video

Runs a top-down pose network frame by frame, as a deployed system would, and writes the video back with each
followed person's skeleton, crop box, the network that ran (a temporal network's cycle position: key, light0,
light1, ...; "image" for an image network) and the step's latency drawn on every frame:

    python -m nas.video runs/retrain/best.pt clip.mp4 --box 410 120 180 460
    python -m nas.video runs/retrain/best.pt frames/ --box 410 120 180 460 --out /tmp/frames_pose.avi
    python -m nas.video runs/retrain/best.pt ROOT/annotations/val/000342_mpii_test.json --root ROOT
    python -m nas.video genotypes/darts_cells_synthetic_seed0.json clip.mp4 --box 10 5 40 80 --input-size 96 72

NETWORK: a retrain run's best.pt (it carries the genotype), or a genotype .json (random weights: a try-out of
the tool and of the latency, its skeletons mean nothing). Both go through `nas.export.load_source`. A network
with `reset()`/`step()` (search_spaces/temporal.py's TemporalPoseNet) is stepped as it is; an image network
through `nas.pose.online.ImageStepper`, which runs it on every frame alone.

INPUT: a video file (read with cv2.VideoCapture), a folder of .jpg/.png frames (sorted by file name), one
image, or a PoseTrack18 video annotation file (INPUT.json with --root ROOT, or INPUT = ROOT with
--annotations FILE). Without annotations there is one person, whose box in the first frame `--box X Y W H`
(pixels) gives. With annotations every track is followed from its first to its last annotated frame, started
from its first annotated box, as `nas.pose.online.run_online` does (the later boxes are not used).

The online loop is run_online's: the first crop is the box grown to the input's aspect and padded 1.25x
(`box_to_center_scale`); every later crop is the box of the previous frame's joints scoring >= --min-score
(`box_from_keypoints`, the same padding; fewer than 3 such joints keep the crop where it was). Each step is
timed alone (the crop's network input and its affine to the heatmaps; not reading, cropping, decoding or
drawing), after a warm-up of one cycle on a blank crop, synchronising the GPU on a CUDA --device. Several
tracks are followed one after the other (a temporal network carries one track's state), then drawn; the
summary gives the mean latency per step, per frame (the steps of one frame summed) and per cycle position.

Output: --out (default <input name>_pose.mp4 in the current directory; .mp4/.m4v/.mov with cv2's mp4v codec,
.avi with MJPG), never overwritten without --overwrite, written under a temporary name and renamed when
complete. --frames-dir also writes every annotated frame as frame_000000.png, ... (where this OpenCV has no
encoder for --out, the PNGs are still written). Frames whose size differs from the first one are resized to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from nas.cli import user_errors
from nas.data.keypoints import COCO_SKELETON, NUM_COCO_KEYPOINTS
from nas.data.posetrack import Video, read_video
from nas.data.topdown import read_rgb
from nas.data.transforms import box_to_center_scale
from nas.data.video_clips import box_from_keypoints, crop_image
from nas.engine.runtime import configure_threads, pick_device
from nas.errors import UserError
from nas.export import load_source
from nas.genotype import MAX_SIDE, size_ok
from nas.pose.decode import decode_heatmaps
from nas.pose.loss import final_heatmaps
from nas.pose.online import ImageStepper, Stepper, person_in, track_spans

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}  # --out suffix -> FourCC
DEFAULT_FPS = 10.0  # image folders, PoseTrack, and videos that do not say
FOLLOW_SCORE = 0.05  # run_online's: joints this sure shape the next crop
DRAW_SCORE = 0.2  # joints this sure are drawn (COCO's rescoring threshold)
PADDING = 1.25  # around the first box and around each box of predicted joints, as in training
JOINT_BGR = (0, 0, 255)  # red joints, as nas.data.inspect draws them
TRACK_BGR = ((0, 255, 0), (255, 128, 0), (0, 165, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0),
             (128, 0, 255), (0, 128, 255))  # limbs, crop box and label of the 1st, 2nd, ... track
RANDOM_NOTE = ("note: random weights (a genotype without a checkpoint): the latency is real, the skeletons mean "
               "nothing; pass a retrain run's best.pt for real poses")


@dataclass
class Step:
    """One step of one track: the crop it ran on, what it predicted (image pixels) and how long it took."""
    frame: int  # index in the input's frames
    track: int
    center: np.ndarray  # (2,) crop centre, image pixels
    scale: np.ndarray  # (2,) crop size (w, h), image pixels
    keypoints: np.ndarray  # (K, 2) image pixels
    scores: np.ndarray  # (K,) heatmap maxima
    net: str  # "key", "light0", ... for a temporal network; "image" for an image network
    ms: float  # the step's latency


@dataclass
class TrackStart:
    """A person to follow over frames first..last (inclusive; None: to the end) from `box` [x, y, w, h]."""
    track: int
    first: int
    last: int | None
    box: Sequence[float]


# ---- frames ------------------------------------------------------------------------------------------

class ImageFrames:
    """Frames from image files (a folder, one image, or a PoseTrack video's frames), read on demand as RGB."""

    fps: float | None = None

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(start, len(self.paths) if stop is None else min(stop, len(self.paths))):
            yield i, read_rgb(self.paths[i])  # UnreadableImageError names the file


class VideoFrames:
    """Frames of a video file, decoded in order by cv2.VideoCapture (each call to `frames` decodes again)."""

    def __init__(self, path: Path):
        self.path = path
        capture = cv2.VideoCapture(str(path))
        try:
            ok = capture.isOpened() and capture.read()[0]
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if ok else 0.0
        finally:
            capture.release()
        if not ok:
            raise UserError(f"cannot read video {path}: OpenCV cannot open or decode it (not a video, or a codec "
                            f"this OpenCV build lacks); pass a video, a folder of .jpg/.png frames, or a PoseTrack "
                            f"annotation file")
        self.fps = fps if np.isfinite(fps) and 0 < fps <= 1000 else None

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while stop is None or i < stop:
                ok, bgr = capture.read()
                if not ok:
                    return
                if i >= start:
                    yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            capture.release()


def _image_folder(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images; pass a folder of frames, a video "
                        f"file or a PoseTrack annotation file")
    return paths


def _read_annotations(path: Path, root: Path) -> Video:
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder; pass the folder the annotation's file_name paths start from")
    try:
        video = read_video(path, root)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} is not a PoseTrack18 video annotation file ({type(err).__name__}: {detail})") \
            from None
    if not video.frames[0].file_path.is_file():
        raise UserError(f"{path}: its first frame {video.frames[0].file_path} does not exist; pass as --root the "
                        f"folder its file_name paths ({video.frames[0].file_path.relative_to(root)}) start from")
    return video


def posetrack_tracks(video: Video) -> list[TrackStart]:
    """Every track of `video`, from its first annotated box, over its first..last annotated frames (run_online's
    spans: tracks with an id and a box of positive size)."""
    return [TrackStart(track, first, last, [float(v) for v in person_in(video.frames[first], track).bbox])
            for track, (first, last) in sorted(track_spans(video).items())]


def check_box(box: Sequence[float], image_size: tuple[int, int]) -> None:
    """A box [x, y, w, h] of positive size that overlaps an (H, W) image, else a one-line UserError."""
    x, y, w, h = (float(v) for v in box)
    height, width = image_size
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        raise UserError(f"--box X Y W H must have a positive width and height, got {' '.join(f'{v:g}' for v in box)}")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise UserError(f"--box {x:g} {y:g} {w:g} {h:g} lies outside the first frame ({width} x {height} pixels); "
                        f"give the person's box in the first frame's pixels")


# ---- the online loop ---------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle_names(stepper: Any) -> list[str]:
    """The networks of one cycle in order: ["key", "light0", ...] for a temporal network, else ["image"]."""
    namer = getattr(stepper, "frame_net", None)
    return [namer(t) for t in range(int(getattr(stepper, "cycle", 0)) + 1)] if callable(namer) else ["image"]


@torch.no_grad()
def warm_up(stepper: Stepper, input_size: Sequence[int], device: torch.device) -> None:
    """One untimed cycle on a blank crop (first calls allocate, pick kernels, ...), then a reset."""
    stepper.reset()
    image = torch.zeros(1, 3, int(input_size[0]), int(input_size[1]), device=device)
    affine = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
    for _ in cycle_names(stepper):
        stepper.step(image, affine)
    _sync(device)
    stepper.reset()


@torch.no_grad()
def follow_track(stepper: Stepper, frames: Iterable[tuple[int, np.ndarray]], box: Sequence[float],
                 input_size: Sequence[int], track: int = 0, min_score: float = FOLLOW_SCORE,
                 padding: float = PADDING, device: torch.device | str = "cpu") -> list[Step]:
    """Follow one person over `frames` ((index, RGB image) in time order) from `box` [x, y, w, h] in the first:
    run_online's loop for one track (module doc), keeping every step."""
    device = torch.device(device)
    height, width = int(input_size[0]), int(input_size[1])
    aspect = width / height
    namer = getattr(stepper, "frame_net", None)
    stepper.reset()
    steps: list[Step] = []
    for t, (index, image) in enumerate(frames):
        if t == 0:
            center, scale = box_to_center_scale(box, aspect, padding)
        else:
            last = steps[-1]
            center, scale = box_from_keypoints(last.keypoints, last.scores, min_score, aspect, expand=padding,
                                               previous=(last.center, last.scale))
        crop, affine = crop_image(image, center, scale, (height, width))
        crop, affine = crop.unsqueeze(0).to(device), torch.from_numpy(affine).unsqueeze(0).to(device)
        _sync(device)
        start = time.perf_counter()
        heat = final_heatmaps(stepper.step(crop, affine))  # of several heatmap sets, the prediction
        _sync(device)
        ms = (time.perf_counter() - start) * 1e3
        preds, maxvals = decode_heatmaps(heat.float().cpu().numpy(), np.asarray([center]), np.asarray([scale]))
        steps.append(Step(frame=index, track=track, center=np.asarray(center, np.float64),
                          scale=np.asarray(scale, np.float64), keypoints=preds[0], scores=maxvals[0, :, 0],
                          net=namer(t) if callable(namer) else "image", ms=ms))
    return steps


# ---- drawing -----------------------------------------------------------------------------------------

def _pixel(point: Sequence[float]) -> tuple[int, int]:
    return int(round(float(point[0]))), int(round(float(point[1])))


def _text(picture: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """`text` with its top-left at `origin`, on a dark band so it reads on any background."""
    size = max(0.35, min(picture.shape[:2]) / 900)
    thick = 1 if size < 0.8 else 2
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, thick)
    x, y = origin
    cv2.rectangle(picture, (x, y), (x + w + 4, y + h + base + 4), (0, 0, 0), -1)
    cv2.putText(picture, text, (x + 2, y + h + 2), cv2.FONT_HERSHEY_SIMPLEX, size, colour, thick, cv2.LINE_AA)


def draw_person(picture: np.ndarray, step: Step, colour: tuple[int, int, int], min_score: float = DRAW_SCORE,
                label: str | None = None) -> None:
    """Draw one step's crop box (thin), limbs (both ends >= `min_score`; COCO's limb list for 17 joints, as
    nas.data.inspect does) in `colour`, joints >= `min_score` as red dots, and `label` above the box, on a BGR
    picture, in place."""
    height, width = picture.shape[:2]
    thick = max(1, round(min(height, width) / 300))
    radius = max(2, round(min(height, width) / 200))
    (cx, cy), (sw, sh) = step.center, step.scale
    corner = _pixel((cx - sw / 2, cy - sh / 2))
    cv2.rectangle(picture, corner, _pixel((cx + sw / 2, cy + sh / 2)), colour, 1, cv2.LINE_8)  # crisp, 1 px
    sure = (step.scores >= min_score) & np.isfinite(step.keypoints).all(axis=1)
    if len(step.keypoints) == NUM_COCO_KEYPOINTS:  # COCO's joints, or PoseTrack's in COCO's slots; others: dots
        for a, b in COCO_SKELETON:
            if sure[a - 1] and sure[b - 1]:
                cv2.line(picture, _pixel(step.keypoints[a - 1]), _pixel(step.keypoints[b - 1]), colour, thick,
                         cv2.LINE_AA)
    for point in step.keypoints[sure]:
        cv2.circle(picture, _pixel(point), radius, JOINT_BGR, -1, cv2.LINE_AA)
    if label:
        _text(picture, label, (max(corner[0], 0), max(corner[1], 0)), colour)


def draw_frame(image: np.ndarray, index: int, steps: Sequence[Step], colours: dict[int, tuple[int, int, int]],
               min_score: float = DRAW_SCORE) -> np.ndarray:
    """The annotated BGR frame: every step's person, and at the top left the frame index with the network and
    latency of its one step (several people: how many, the summed latency, and each one's in its label)."""
    picture = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for step in steps:
        label = f"#{step.track} {step.net} {step.ms:.1f} ms" if len(steps) > 1 else None
        draw_person(picture, step, colours[step.track], min_score, label)
    if len(steps) == 1:
        header = f"frame {index}  {steps[0].net}  {steps[0].ms:.1f} ms"
    elif steps:
        header = f"frame {index}  {len(steps)} people  {sum(s.ms for s in steps):.1f} ms"
    else:
        header = f"frame {index}  no person"
    _text(picture, header, (0, 0), (255, 255, 255))
    return picture


class Output:
    """The annotated video (under a temporary name until `close(done=True)` renames it) and/or PNGs."""

    def __init__(self, out: Path, fps: float, frames_dir: Path | None):
        self.out, self.fps, self.frames_dir = out, fps, frames_dir
        self.partial = out.with_name(f".{out.stem}.partial{out.suffix}")
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None  # (W, H) of every frame written
        self.count, self.video = 0, True

    def write(self, picture: np.ndarray) -> None:
        if self.size is None:
            self.size = (picture.shape[1], picture.shape[0])
            self._open()
        if (picture.shape[1], picture.shape[0]) != self.size:
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
        if self.writer is not None:
            self.writer.write(picture)
        if self.frames_dir is not None:
            path = self.frames_dir / f"frame_{self.count:06d}.png"
            if not cv2.imwrite(str(path), picture):
                raise UserError(f"cannot write {path}; check that the folder is writable and has space")
        self.count += 1

    def _open(self) -> None:
        self.partial.unlink(missing_ok=True)
        writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*CODECS[self.out.suffix.lower()]),
                                 self.fps, self.size)
        if writer.isOpened():
            self.writer = writer
            return
        writer.release()
        self.partial.unlink(missing_ok=True)
        if self.frames_dir is None:
            raise UserError(f"this OpenCV cannot write {self.out.suffix} video ({CODECS[self.out.suffix.lower()]} "
                            f"codec) to {self.out}; try --out NAME.avi, or --frames-dir DIR for PNG frames")
        self.video = False
        print(f"note: this OpenCV cannot write {self.out}; writing the PNG frames in {self.frames_dir} only")

    def close(self, done: bool) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if done and self.video and self.count:
            os.replace(self.partial, self.out)
        else:
            self.partial.unlink(missing_ok=True)


# ---- the command -------------------------------------------------------------------------------------

def _check_args(args: argparse.Namespace) -> None:
    if args.input_size is not None and not size_ok(args.input_size):
        raise UserError(f"--input-size must be H W in integers from 1 to {MAX_SIDE}, got {args.input_size}")
    if args.fps is not None and not (np.isfinite(args.fps) and 0 < args.fps <= 1000):
        raise UserError(f"--fps must be > 0 (and <= 1000), got {args.fps:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {args.max_frames}")
    for name in ("min_score", "draw_score"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1] (a heatmap maximum), got {value:g}")


def _open_input(args: argparse.Namespace) -> tuple[Any, list[TrackStart] | None, str]:
    """The frames, the PoseTrack tracks (None without annotations) and the name the default --out is made of."""
    source = Path(args.input) if args.input is not None else None
    annotations = Path(args.annotations) if args.annotations else None
    if source is not None and source.suffix.lower() == ".json" and not source.is_dir():
        if annotations is not None:
            raise UserError("give the PoseTrack annotation file once: as INPUT (with --root) or as --annotations")
        annotations, source = source, None
    if annotations is not None:
        if args.box is not None:
            raise UserError("--box is for a video or an image folder; with PoseTrack annotations each track starts "
                            "from its first annotated box")
        if args.root is None and (source is None or not source.is_dir()):
            raise UserError("a PoseTrack annotation file needs --root DIR, the folder its file_name paths start "
                            "from (or pass that folder as INPUT with --annotations FILE)")
        video = _read_annotations(annotations, Path(args.root) if args.root is not None else source)
        if args.max_frames is not None:
            video = dataclasses.replace(video, frames=video.frames[:args.max_frames])
        tracks = posetrack_tracks(video)
        if not tracks:
            raise UserError(f"{annotations} annotates no person with a track id and a box; nothing to follow")
        return ImageFrames([f.file_path for f in video.frames]), tracks, annotations.stem
    if source is None:
        raise UserError("give INPUT: a video file, a folder of frames, or a PoseTrack annotation file")
    if not source.exists():
        raise UserError(f"input not found: {source}")
    if source.is_dir():
        frames: Any = ImageFrames(_image_folder(source))
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        frames = ImageFrames([source])
    else:
        frames = VideoFrames(source)
    return frames, None, source.resolve().name if source.is_dir() else source.stem


def _refuse_existing(out: Path, frames_dir: Path | None, overwrite: bool) -> None:
    if out.suffix.lower() not in CODECS:
        raise UserError(f"--out {out}: the video must end in {', '.join(CODECS)}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a file name such as {out / 'pose.mp4'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    existing = [str(out)] if out.exists() else []
    if frames_dir is not None:
        if frames_dir.exists() and not frames_dir.is_dir():
            raise UserError(f"--frames-dir {frames_dir} is a file, not a folder")
        if frames_dir.is_dir() and any(frames_dir.glob("frame_*.png")):
            existing.append(f"PNG frames in {frames_dir}")
    if existing and not overwrite:
        raise UserError(f"{' and '.join(existing)} already exist{'s' if existing == [str(out)] else ''}; pass "
                        f"--overwrite to replace, or --out elsewhere")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Follow, draw, write; returns the figures the summary prints."""
    _check_args(args)
    network = Path(args.network)
    if not network.is_file():
        raise UserError(f"network not found: {network}; pass a retrain run's best.pt or a genotype .json")
    frames, tracks, name = _open_input(args)
    out = Path(args.out) if args.out else Path.cwd() / f"{name}_pose.mp4"
    frames_dir = Path(args.frames_dir) if args.frames_dir else None
    _refuse_existing(out, frames_dir, args.overwrite)
    if tracks is None:
        if args.box is None:
            raise UserError("no person to start from: pass --box X Y W H (the person's box in the first frame, "
                            "pixels), or --annotations FILE --root DIR (PoseTrack18 tracks)")
        _, first = next(frames.frames(0, 1))
        check_box(args.box, first.shape[:2])
        tracks = [TrackStart(0, 0, None, list(args.box))]
    threads = configure_threads(args.threads)
    try:
        device = pick_device(args.device)
    except UserError as err:  # its words are the Hydra commands' (device=...)
        raise UserError(str(err).replace(f"device={args.device!r}", f"--device {args.device}")
                        .replace("use device=cpu", "pass --device cpu")) from None
    is_genotype = network.suffix.lower() == ".json"
    source = load_source(None if is_genotype else network, network if is_genotype else None, args.input_size)
    if source.random:
        print(RANDOM_NOTE)
    model = source.model.to(device).eval()
    stepper: Any = model if callable(getattr(model, "step", None)) and callable(getattr(model, "reset", None)) \
        else ImageStepper(model)
    if stepper is model and hasattr(model, "input_size"):
        model.input_size = tuple(source.input_size)  # the crops' size, which warping the heatmaps between crops needs
    warm_up(stepper, source.input_size, device)

    stop = args.max_frames
    by_frame: dict[int, list[Step]] = {}
    for track in tracks:
        last = track.last + 1 if track.last is not None else stop
        for step in follow_track(stepper, frames.frames(track.first, last), track.box, source.input_size,
                                 track.track, args.min_score, PADDING, device):
            by_frame.setdefault(step.frame, []).append(step)
    colours = {t.track: TRACK_BGR[i % len(TRACK_BGR)] for i, t in enumerate(tracks)}
    fps = float(args.fps or frames.fps or DEFAULT_FPS)
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            for old in frames_dir.glob("frame_*.png"):
                old.unlink()
    output = Output(out, fps, frames_dir)
    done = False
    try:
        for index, image in frames.frames(0, stop):
            output.write(draw_frame(image, index, by_frame.get(index, []), colours, args.draw_score))
        done = True
    finally:
        output.close(done)

    steps = [s for frame in by_frame.values() for s in frame]
    per_net = {n: [s.ms for s in steps if s.net == n] for n in cycle_names(stepper)}
    return {"out": str(out) if output.video else None, "frames_dir": str(frames_dir) if frames_dir else None,
            "frames": output.count, "size": output.size, "fps": fps, "tracks": len(tracks), "steps": len(steps),
            "mean_step_ms": float(np.mean([s.ms for s in steps])) if steps else 0.0,
            "mean_frame_ms": float(np.mean([sum(s.ms for s in f) for f in by_frame.values()])) if steps else 0.0,
            "per_net_ms": {n: float(np.mean(v)) for n, v in per_net.items() if v},
            "per_net_steps": {n: len(v) for n, v in per_net.items() if v},
            "input_size": list(source.input_size), "device": str(device), "threads": threads,
            "network": str(network), "random": source.random}


def summary(info: dict[str, Any]) -> str:
    """The lines printed at the end: what ran, the latencies, what was written."""
    h, w = info["input_size"]
    lines = [f"followed {info['tracks']} track{'s' * (info['tracks'] != 1)} over {info['frames']} frames: "
             f"{info['steps']} steps of {info['network']} at {h}x{w} on {info['device']} "
             f"({info['threads']} thread{'s' * (info['threads'] != 1)})"]
    positions = ", ".join(f"{n} {ms:.1f} ms x{info['per_net_steps'][n]}" for n, ms in info["per_net_ms"].items())
    lines.append(f"latency: mean {info['mean_frame_ms']:.1f} ms per frame with a person, {info['mean_step_ms']:.1f} "
                 f"ms per step" + (f"; per cycle position: {positions}" if len(info["per_net_ms"]) > 1 else ""))
    size = f"{info['size'][0]}x{info['size'][1]}" if info["size"] else "no frames"
    if info["out"]:
        lines.append(f"wrote {info['out']} ({info['frames']} frames, {size}, {info['fps']:g} fps)")
    if info["frames_dir"]:
        lines.append(f"wrote {info['frames']} PNG frames in {info['frames_dir']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nas.video", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(line for line in __doc__.splitlines()
                                                                      if line.startswith("    python -m")))
    parser.add_argument("network", help="a retrain run's best.pt, or a genotype .json (random weights)")
    parser.add_argument("input", nargs="?", help="a video file, a folder of .jpg/.png frames, an image, or a "
                        "PoseTrack18 annotation .json (with --root); with --annotations, the PoseTrack root")
    parser.add_argument("--box", nargs=4, type=float, metavar=("X", "Y", "W", "H"),
                        help="the person's box in the first frame, pixels (without annotations)")
    parser.add_argument("--annotations", help="a PoseTrack18 video annotation file: follow all its tracks")
    parser.add_argument("--root", help="the folder the annotation's file_name paths start from")
    parser.add_argument("--out", help="the video to write (.mp4 or .avi; default <input name>_pose.mp4 here)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (and PNG frames)")
    parser.add_argument("--frames-dir", help="also write every annotated frame as a PNG in this folder")
    parser.add_argument("--fps", type=float, help=f"of the output (default: the video's, else {DEFAULT_FPS:g})")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="the network's input (default: the checkpoint's run's, else the genotype's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: nas.engine.runtime's rule)")
    parser.add_argument("--min-score", type=float, default=FOLLOW_SCORE,
                        help=f"joints at least this sure shape the next crop (default {FOLLOW_SCORE:g})")
    parser.add_argument("--draw-score", type=float, default=DRAW_SCORE,
                        help=f"joints at least this sure are drawn (default {DRAW_SCORE:g})")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        print(summary(run(args)))


if __name__ == "__main__":
    main()
