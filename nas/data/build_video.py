"""The `_target_` of conf/data/posetrack.yaml: PoseTrack 2018 as clips of tracks (`VideoData`).

Training and clip-level evaluation use `ClipDataset`s (nas.data.video_clips); online evaluation over whole
videos runs a model frame by frame over `VideoData.val_videos` and scores it with
`nas.data.posetrack.evaluate_posetrack` (every labelled frame counts, also those in no clip).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nas.data.build import SPLIT_NAMES, _bad_fraction, _pair, _split_names
from nas.data.posetrack import POSETRACK_FLIP_PAIRS, Video, read_video
from nas.data.topdown import MissingSplitError
from nas.data.video_clips import AUGMENT_KEYS, NUM_POSETRACK_KEYPOINTS, ClipDataset, _check_count
from nas.errors import UserError


@dataclass
class VideoData:
    """What `PoseData` is for images, for clips: the train and val ClipDatasets (None when not built)
    and what a model and its evaluation need to know. `val_videos` are the val split's whole videos."""
    name: str
    train: ClipDataset | None
    val: ClipDataset | None
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float = 2.0
    clip_length: int = 4
    num_keypoints: int = NUM_POSETRACK_KEYPOINTS
    flip_pairs: Sequence[tuple[int, int]] = POSETRACK_FLIP_PAIRS
    max_bad_fraction: float = 0.01  # of a training epoch's clips that may be skipped (unreadable frame)

    @property
    def val_videos(self) -> list[Video] | None:
        """The val split's videos (all of them, or the first `max_val_videos`), for online evaluation."""
        return self.val.videos if self.val is not None else None


def read_videos(root: Path, split: str) -> list[Video]:
    """The videos of `root/annotations/<split>/*.json` by file name; MissingSplitError when there are none,
    UserError naming the file that is not a PoseTrack18 video file."""
    folder = root / "annotations" / split
    files = sorted(folder.glob("*.json"))
    if not files:
        raise MissingSplitError(f"PoseTrack annotations for split {split!r} not found: expected "
                                f"<video>.json files in {folder}")
    videos = []
    for path in files:
        try:
            videos.append(read_video(path, root))
        except (ValueError, KeyError, TypeError) as err:  # bad JSON, a missing key, a wrong type
            kind = "missing key" if isinstance(err, KeyError) else type(err).__name__
            raise UserError(f"{path} is not a PoseTrack18 video file ({kind}: {err}); fix or remove it") \
                from err
    return videos


def _augment_args(augment: dict | None) -> dict:
    args = dict(augment or {})
    unknown = sorted(set(args) - set(AUGMENT_KEYS))
    if unknown:
        raise UserError(f"data.augment.{unknown[0]} is not a clip augmentation option; the options are "
                        f"{', '.join(AUGMENT_KEYS)} (one draw per clip, no half-body)")
    return args


def posetrack_data(root: str, train_split: str = "train", val_split: str = "val",
                   input_size: Sequence[int] = (256, 192), heatmap_size: Sequence[int] = (64, 48),
                   sigma: float = 2.0, clip_length: int = 4, clip_stride: int | None = None,
                   max_train_clips: int | None = None, max_val_videos: int | None = None,
                   augment: dict | None = None, max_bad_fraction: float = 0.01,
                   splits: Sequence[str] = SPLIT_NAMES) -> VideoData:
    """PoseTrack 2018 in its published layout: ROOT/annotations/{train,val}/<video>.json, images under ROOT
    at each image's `file_name`. Clips of `clip_length` frames start every `clip_stride` frames (default
    `clip_length`); `max_train_clips` keeps that many training clips spread over the videos,
    `max_val_videos` the first val videos (by file name). Only the `splits` named are built."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"PoseTrack root {path} does not exist; set data.root=/path/to/posetrack18 "
                        "(the folder holding annotations/{train,val}/ and images/)")
    names = _split_names(splits)
    size, hm = _pair(input_size, "data.input_size"), _pair(heatmap_size, "data.heatmap_size")
    common = dict(input_size=size, heatmap_size=hm, sigma=float(sigma), clip_length=clip_length,
                  clip_stride=clip_stride)
    max_val_videos = _check_count(max_val_videos, "data.max_val_videos", allow_none=True)
    max_train_clips = _check_count(max_train_clips, "data.max_train_clips", allow_none=True)
    augment_args = _augment_args(augment)
    train = ClipDataset(read_videos(path, train_split), train=True, max_clips=max_train_clips, **common,
                        **augment_args) if "train" in names else None
    val = ClipDataset(read_videos(path, val_split)[:max_val_videos], train=False, **common) \
        if "val" in names else None
    built = train if train is not None else val
    return VideoData("posetrack", train, val, size, hm, sigma=float(sigma), clip_length=built.clip_length,
                     max_bad_fraction=_bad_fraction(max_bad_fraction))


def split_videos(clips: ClipDataset, held_out: int, seed: int) -> tuple[ClipDataset, list[Video]]:
    """A search's split of the training videos (never the val split): `held_out` whole videos, drawn with
    `seed`, to score candidates on online, and the clips of the other videos to train the weights on. Whole
    videos, so no scored frame was seen in training, not even from another clip of the same track."""
    if not 1 <= held_out < len(clips.videos):
        raise UserError(f"score_videos={held_out} must be at least 1 and below the {len(clips.videos)} training "
                        "videos (the rest train the supernet)")
    order = list(range(len(clips.videos)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:held_out])
    kept = [v for i, v in enumerate(clips.videos) if i not in set(held)]
    return clips.restricted(kept), [clips.videos[i] for i in held]


VIDEO_DATA = ("synthetic_video", "posetrack")  # the data configs that give clips (conf/data/)


def check_video_pairing(space: object, data: object, command: str) -> bool:
    """True for a video run (clip data and a space of clip networks); a one-line UserError when one of the two
    is video and the other is not. Image networks may train on clips (nas.retrain: each frame on its own)
    where `command` allows it."""
    video, clip_space = isinstance(data, VideoData), bool(getattr(space, "takes_clips", False))
    if clip_space and not video:
        raise UserError(f"search_space=temporal networks run on video clips but data={getattr(data, 'name', data)} "
                        "gives images; add data=synthetic_video (or data=posetrack data.root=...)")
    if video and not clip_space and command != "retrain":
        raise UserError(f"data={data.name} gives clips of video tracks, which nas.{command} takes only for "
                        "search_space=temporal; use image data (synthetic, coco, mpii) or search_space=temporal")
    return video


def load_key(net: object, checkpoint: str, key_genotype: object, freeze: bool = True) -> None:
    """Load a temporal network's key network from `checkpoint` (nas.retrain's best.pt of the key genotype,
    e.g. retrained on video frames) and freeze it unless `freeze=False` (fine-tuning); a checkpoint of another
    network is refused in one line."""
    from nas.engine.checkpoint import load_checkpoint
    from nas.genotype import Genotype
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(f"key_checkpoint={checkpoint} not found; pass the best.pt of a retrain of the key genotype")
    try:
        state = load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"key_checkpoint={checkpoint} cannot be read as a checkpoint ({type(err).__name__}); "
                        "pass the best.pt of a retrain of the key genotype") from None
    saved = Genotype.from_dict(state["genotype"]) if isinstance(state, dict) and "genotype" in state else None
    if saved is None or saved.space != key_genotype.space or saved.genotype != key_genotype.genotype:
        raise UserError(f"key_checkpoint={checkpoint} is not a network of the key genotype "
                        f"({key_genotype.space}); retrain the genotype in search_space.key and pass its best.pt")
    try:
        net.key.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"key_checkpoint={checkpoint} does not fit the key network ({first}); were the key "
                        "genotype's space_args changed?") from None
    if freeze:
        net.freeze_key()


def refuse_clips(data: object, command: str) -> None:
    """A one-line error when `command` (an image pipeline: evaluate) is given video clips."""
    if isinstance(data, VideoData):
        raise UserError(f"data={data.name} gives clips of video tracks, which nas.{command} cannot score "
                        "(it takes image data: synthetic, coco, mpii); a video network's retrain scores it online "
                        "on the val videos (results.json)")
