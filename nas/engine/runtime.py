"""What every entry point needs around the loop: seeding, device, run directory, logs, loaders."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from nas.errors import UserError
from nas.utils.io import atomic_write_text

log = logging.getLogger("posenas")


def check_decoder(name: str) -> str:
    """Fail before any work on an unknown heatmap decoder (`decode=`)."""
    from nas.pose.decode import DECODE_METHODS
    if name not in DECODE_METHODS:
        raise UserError(f"decode={name!r} is not a decoder; use one of {', '.join(DECODE_METHODS)}")
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device={name!r} is not a device name (try auto, cpu, cuda, cuda:1)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} asked for CUDA but none is available here; use device=cpu")
    return device


def to_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """Put the 4-d weights (and so, through PyTorch's convolution rules, every activation) in NHWC.

    On this project's 2-core CPU a retrain step of a separable-convolution-heavy DARTS network took
    0.59 s in NCHW and 0.35 s in NHWC (one thread, batch 32 at 96x72: oneDNN's depthwise backward is
    the slow kernel in NCHW); cuDNN prefers NHWC too under AMP. The results are the same up to
    floating-point summation order.
    """
    return model.to(memory_format=torch.channels_last) if channels_last else model


def prepare_run_dir(run_dir: Path, resume: bool, checkpoint: str = "last.pt",
                    config: DictConfig | None = None) -> Path | None:
    """Return the checkpoint to resume from (or None); refuse to start over a finished run, and
    (given the new `config`) to resume with a config that differs from the run's (`check_resume`)."""
    ckpt = run_dir / checkpoint
    if resume:
        if not ckpt.is_file():
            raise UserError(f"resume=true but {ckpt} does not exist; point run_dir= at the run "
                            "directory of the run to continue")
        if config is not None:
            check_resume(config, run_dir)
        return ckpt
    if ckpt.exists():
        raise UserError(f"{run_dir} already holds a run ({ckpt.name}); pass resume=true to continue "
                        "it, or choose another run_dir= (nothing was overwritten)")
    return None


# Keys that may differ on resume without mixing two runs: where and how fast it runs, not what it computes
# (channels_last changes only the floating-point summation order).
RESUME_FREE_KEYS = ("resume", "resume_allow_changes", "run_dir", "device", "threads", "num_workers", "channels_last")


def check_resume(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Compare the new resolved config with the run's saved config.yaml, key by dotted key.

    A difference outside RESUME_FREE_KEYS would quietly mix two runs (another strategy, data, epoch
    count, learning rate...): it is refused, naming the keys, with nothing in the run directory
    touched, unless `resume_allow_changes` lists the key or a prefix of it (`optimizer` covers
    `optimizer.lr`). Allowed changes are appended to resume_changes.jsonl (old and new values) and the
    new config.yaml is kept. Returns the changes."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        log.warning("%s is missing: cannot check that the resumed config matches the run's", saved_path)
        return {}
    changes = saved_config_changes(saved_path, cfg)
    allowed = list(cfg.get("resume_allow_changes") or [])
    refused = [key for key in changes if not any(key == a or key.startswith(f"{a}.") for a in allowed)]
    if refused:
        raise UserError(f"resume=true but the config differs from {saved_path}: {_describe_changes(changes, refused)}"
                        f"; resume with the run's values, or pass resume_allow_changes=[{_allow_hint(refused)}] "
                        "to continue with the new ones (recorded in resume_changes.jsonl)")
    if changes:
        record = {"time": round(time.time(), 3), "changes": changes}
        with (run_dir / "resume_changes.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        save_config(cfg, run_dir)
        log.warning("resuming with changed config: %s", _describe_changes(changes, list(changes)))
    return changes


_ABSENT = object()


def saved_config_changes(saved_path: Path, cfg: DictConfig, ignore: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Dotted key -> {"old", "new"} for every value of the saved config.yaml that differs from `cfg`
    (resolved), outside RESUME_FREE_KEYS and `ignore`; "<absent>" stands for a missing key."""
    old = flatten_config(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False))
    new = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    return {key: {"old": old.get(key, "<absent>"), "new": new.get(key, "<absent>")}
            for key in sorted(set(old) | set(new))
            if old.get(key, _ABSENT) != new.get(key, _ABSENT) and key.split(".")[0] not in RESUME_FREE_KEYS
            and key not in ignore}


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values (compared whole)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _describe_changes(changes: dict[str, dict[str, Any]], keys: list[str], most: int = 6) -> str:
    shown = [f"{k} ({json.dumps(changes[k]['old'])} -> {json.dumps(changes[k]['new'])})" for k in keys[:most]]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(shown) + more


def _allow_hint(keys: list[str], most: int = 6) -> str:
    """The keys to allow, or their top-level groups when there are many (e.g. another strategy)."""
    if len(keys) <= most:
        return ",".join(keys)
    return ",".join(sorted({k.split(".")[0] for k in keys}))


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


class MetricsLog:
    """metrics.jsonl: one JSON object per line. On resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, keep_before_epoch: int | None = None):
        self.path = path
        if keep_before_epoch is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("epoch", 0) < keep_before_epoch]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int,
                drop_last: bool = False) -> DataLoader:
    if len(dataset) == 0:
        source = getattr(dataset, "ann_file", None) \
            or getattr(getattr(dataset, "dataset", None), "ann_file", None)  # a Subset's dataset
        where = f" ({source})" if source else ""
        raise UserError(f"a dataset split is empty after filtering{where}: expected at least one usable "
                        "person annotation; check data.root, the split names and data.max_train/max_val")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=drop_last and len(dataset) >= batch_size,
                      persistent_workers=False, pin_memory=False)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def forever(loader: DataLoader) -> Iterator[Any]:
    """Cycle a loader (the held-out split may be shorter than the training split)."""
    while True:
        yield from loader


def format_eta(elapsed_s: float, done: int, total: int) -> str:
    """Remaining time as H:MM:SS from the mean time per unit so far."""
    remaining = int(elapsed_s / max(done, 1) * max(total - done, 0))
    return f"{remaining // 3600}:{remaining % 3600 // 60:02d}:{remaining % 60:02d}"


def configure_threads(threads: int | None = None) -> int:
    """Intra-op CPU threads: `threads`, else OMP_NUM_THREADS, else half the logical cores.

    Half, because logical cores usually come in hyperthread pairs: on the 2-core machines this
    project is tested on, one thread ran a supernet step in 1.0 s and two threads in 2.7 s.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS")
        threads = int(env) if env else max(1, min(8, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(threads)
    return threads
