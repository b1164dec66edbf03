"""The `_target_` of conf/data/mpii.yaml: MPII Human Pose as a `PoseData`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nas.data.build import PoseData, _bad_fraction, _pair
from nas.data.mpii import MpiiTopDown
from nas.errors import UserError


def mpii_data(root: str, input_size: Sequence[int] = (256, 256), heatmap_size: Sequence[int] = (64, 64),
              sigma: float = 2.0, augment: dict | None = None, train_split: str = "train",
              val_split: str = "valid", one_based: bool = True, max_train: int | None = None,
              max_val: int | None = None, max_bad_fraction: float = 0.01) -> PoseData:
    """MPII in the HRNet layout (annot/{train,valid}.json, images/); PCKh via nas.metrics.pckh."""
    path = Path(root).expanduser()
    if not (path / "annot").is_dir():
        raise UserError(f"MPII root {path} has no annot/ folder; set data.root=/path/to/mpii "
                        "(the folder holding annot/{train,valid}.json and images/)")
    size, hm = _pair(input_size, "data.input_size"), _pair(heatmap_size, "data.heatmap_size")
    common = dict(input_size=size, heatmap_size=hm, sigma=sigma, one_based=one_based)
    train = MpiiTopDown(path, train_split, train=True, max_samples=max_train, **common,
                        **dict(augment or {}))
    val = MpiiTopDown(path, val_split, train=False, max_samples=max_val, **common)
    return PoseData("mpii", train, val, size, hm, max_bad_fraction=_bad_fraction(max_bad_fraction))
