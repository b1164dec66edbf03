"""Dataset factories named by the `_target_` of the configs in conf/data/.

Each returns a `PoseData`: the train and val datasets on the same top-down COCO-format code path,
plus what the model and evaluation need to know about the keypoints. `splits` builds only some of them
(a tool that reads only the val split must not need the training annotations); `build_splits` also finds
which splits exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from hydra.utils import instantiate
from torch.utils.data import Dataset, Subset

from nas.data.coco import CocoTopDown
from nas.data.topdown import MissingSplitError
from nas.errors import UserError
from nas.pose.nms import NMS_METHODS


SPLIT_NAMES = ("train", "val")


@dataclass
class PoseData:
    name: str
    train: CocoTopDown | None  # None: not built (see `splits`)
    val: CocoTopDown | None
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    nms: str | None = None       # OKS-NMS of the val predictions: None, "oks" or "soft_oks"
    nms_threshold: float = 0.9
    max_bad_fraction: float = 0.01  # of a training epoch's samples that may be skipped (unreadable image)

    @property
    def num_keypoints(self) -> int:
        return self._built().num_keypoints

    @property
    def flip_pairs(self) -> Sequence[tuple[int, int]]:
        return self._built().flip_pairs

    def _built(self) -> Any:
        return self.val if self.val is not None else self.train


def _pair(value: Sequence[int], what: str) -> tuple[int, int]:
    if len(value) != 2:
        raise UserError(f"{what} must be [height, width], got {list(value)}")
    return int(value[0]), int(value[1])


def _bad_fraction(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise UserError(f"data.max_bad_fraction must be in [0, 1], got {value}")
    return float(value)


def _split_names(splits: Sequence[str]) -> set[str]:
    names = set(splits)
    if not names or not names <= set(SPLIT_NAMES):
        raise UserError(f"splits must name one or both of {', '.join(SPLIT_NAMES)}, got {list(splits)}")
    return names


def _datasets(name: str, root: Path, train_split: str, val_split: str, input_size: Sequence[int],
              heatmap_size: Sequence[int], sigma: float, augment: dict,
              max_train: int | None, max_val: int | None, val_args: dict | None = None,
              splits: Sequence[str] = SPLIT_NAMES) -> PoseData:
    size, hm = _pair(input_size, "data.input_size"), _pair(heatmap_size, "data.heatmap_size")
    common = dict(input_size=size, heatmap_size=hm, sigma=sigma)
    names = _split_names(splits)
    train = CocoTopDown(root, train_split, train=True, max_samples=max_train, **common, **augment) \
        if "train" in names else None
    val = CocoTopDown(root, val_split, train=False, max_samples=max_val, **common, **(val_args or {})) \
        if "val" in names else None
    return PoseData(name, train, val, size, hm)


def synthetic_data(input_size: Sequence[int] = (96, 72), heatmap_size: Sequence[int] = (24, 18),
                   sigma: float = 1.5, augment: dict | None = None, num_train: int = 1600,
                   num_val: int = 200, image_size: Sequence[int] = (256, 256), max_people: int = 4,
                   seed: int = 0, cache_dir: str | None = None, max_train: int | None = None,
                   max_val: int | None = None, max_bad_fraction: float = 0.01,
                   splits: Sequence[str] = SPLIT_NAMES) -> PoseData:
    """The built-in synthetic COCO-format dataset, generated into the cache on first use."""
    from nas.data.synthetic import SyntheticSpec, ensure_synthetic
    spec = SyntheticSpec(num_train=num_train, num_val=num_val, image_size=_pair(image_size, "image_size"),
                         max_people=max_people, seed=seed)
    root = ensure_synthetic(spec, cache_dir)
    data = _datasets("synthetic", root, "train", "val", input_size, heatmap_size, sigma,
                     dict(augment or {}), max_train, max_val, splits=splits)
    data.max_bad_fraction = _bad_fraction(max_bad_fraction)
    return data


def coco_data(root: str, input_size: Sequence[int] = (256, 192), heatmap_size: Sequence[int] = (64, 48),
              sigma: float = 2.0, augment: dict | None = None, train_split: str = "train2017",
              val_split: str = "val2017", max_train: int | None = None,
              max_val: int | None = None, use_gt_bbox: bool = True, bbox_file: str | None = None,
              det_score_threshold: float = 0.0, nms: str | None = None,
              nms_threshold: float = 0.9, max_bad_fraction: float = 0.01,
              splits: Sequence[str] = SPLIT_NAMES) -> PoseData:
    """COCO 2017 keypoints in the HRNet layout (annotations/, images/ or {train,val}2017/).

    The box and NMS settings concern the val split only: `use_gt_bbox=False` evaluates on the person
    detector boxes of `bbox_file` (relative to `root`), and `nms` names the OKS-NMS of its predictions.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"COCO root {path} does not exist; set data.root=/path/to/coco "
                        "(the folder holding annotations/ and train2017/, val2017/ or images/)")
    if nms is not None and nms not in NMS_METHODS:
        raise UserError(f"data.nms must be one of {', '.join(NMS_METHODS)} or null, got {nms!r}")
    val_args = dict(use_gt_bbox=use_gt_bbox, bbox_file=bbox_file,
                    det_score_threshold=det_score_threshold)
    try:
        data = _datasets("coco", path, train_split, val_split, input_size, heatmap_size, sigma,
                         dict(augment or {}), max_train, max_val, val_args, splits)
    except ValueError as err:  # a bad detection file or setting: the user's to fix
        raise UserError(str(err)) from err
    data.nms, data.nms_threshold = nms, float(nms_threshold)
    data.max_bad_fraction = _bad_fraction(max_bad_fraction)
    return data


def split_by_image(dataset: CocoTopDown, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into (weights, held-out) parts with no image in both (DARTS's split)."""
    image_ids = sorted({int(s.image_id) for s in dataset.samples})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(image_ids)[: int(round(fraction * len(image_ids)))].tolist())
    first = [i for i, s in enumerate(dataset.samples) if int(s.image_id) not in held]
    second = [i for i, s in enumerate(dataset.samples) if int(s.image_id) in held]
    if not first or not second:
        raise UserError(f"the training set ({len(image_ids)} images) is too small to hold out "
                        f"{fraction:.0%} of it for the architecture step; use more data")
    return Subset(dataset, first), Subset(dataset, second)


def build_splits(data_cfg: Any, names: Sequence[str] | None) -> tuple[PoseData, dict[str, str]]:
    """The data config's `PoseData` with only the `names` splits built, and {split: why} of those missing.

    `names=None` builds every split whose files exist and reports the others as missing (an error when
    none exists). A factory without a `splits` argument builds all of its splits, as before. The factory
    is called here, not inside Hydra, so its errors arrive as raised (not wrapped by Hydra).
    """
    make = instantiate(data_cfg, _partial_=True)
    if "splits" not in signature(make.func).parameters:
        return make(), {}
    if names is not None:
        return make(splits=list(names)), {}
    built, missing = {}, {}
    for name in SPLIT_NAMES:
        try:
            built[name] = make(splits=[name])
        except MissingSplitError as err:
            missing[name] = str(err)
    if not built:
        raise UserError("no split found: " + "; ".join(missing.values()))
    data = next(iter(built.values()))
    for name, part in built.items():
        setattr(data, name, getattr(part, name))
    return data, missing
