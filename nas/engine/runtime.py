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
    if not resume and ckpt.is_file() and _continues_itself(run_dir):
        resume = True
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


def _continues_itself(run_dir: Path) -> bool:
    """A run stopped on a signal after its checkpoint (interrupted.json), or a requeued SLURM job,
    continues in its own run directory without resume=true."""
    from nas.engine.preemption import interrupted
    marker = interrupted(run_dir)
    if marker is not None:
        log.info("%s stopped on %s at epoch %s: continuing it from its checkpoint", run_dir,
                 marker.get("signal"), marker.get("epoch", "?"))
        return True
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        log.info("requeued SLURM job (restart %s): continuing %s from its checkpoint",
                 os.environ["SLURM_RESTART_COUNT"], run_dir)
        return True
    return False


# Keys that may differ on resume without mixing two runs: where and how fast it runs, not what it computes
# (channels_last changes only the floating-point summation order).
RESUME_FREE_KEYS = ("resume", "resume_allow_changes", "run_dir", "device", "threads", "num_workers", "channels_last",
                    "pin_memory", "persistent_workers", "checkpoint_every_min", "logger", "compile")


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
    from nas.engine.distributed import is_main
    if changes and is_main():  # every rank checks; rank 0 writes
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


def shared_run_dir(run_dir: Path) -> Path:
    """The run directory, checked to be the same on every rank (a `${now:...}` in run_dir resolves
    on each process's own clock; `${run_stamp:...}` is rank 0's time on every rank)."""
    from nas.engine.distributed import all_gather_objects
    seen = all_gather_objects(str(run_dir))
    if len(set(seen)) > 1:
        raise UserError(f"the ranks resolved different run directories ({seen[0]} on rank 0, {seen[1]} on rank 1): "
                        "give run_dir= a fixed path, or use ${run_stamp:...} instead of ${now:...} in it")
    return run_dir


def record_batch(run_dir: Path, per_process: int, device: torch.device, lr: float | None = None,
                 base_lr: float | None = None, scaling: str | None = None) -> dict[str, Any]:
    """The batch and learning-rate convention of this run, logged and written to <run_dir>/batch.json:
    the configured batch_size is per process, the global batch is batch_size x processes, and the
    learning rate is the configured one or (lr_scaling=linear) scaled by global batch / lr_base_batch."""
    from nas.engine.distributed import is_main, world
    size = world().size
    info: dict[str, Any] = {"processes": size, "per_process_batch": per_process, "global_batch": per_process * size,
                            "device": str(device), "lr_scaling": scaling}
    if lr is not None:
        info.update({"lr": lr, "configured_lr": base_lr if base_lr is not None else lr})
    info["text"] = f"{per_process} x {size} process(es) = {per_process * size}" if size > 1 else str(per_process)
    if is_main():
        atomic_write_text(run_dir / "batch.json", json.dumps({k: v for k, v in info.items() if k != "text"},
                                                               indent=1) + "\n")
    return info


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


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int | None,
                drop_last: bool = False, seed: int = 0, device: torch.device | None = None,
                shard: bool | None = None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None) -> DataLoader:
    """A loader whose order comes from `nas.engine.sampling.EpochSampler` (seeded by `seed` and the
    pass, not by the process's RNG) and whose training items are augmented from (seed, pass, index).

    Under torch.distributed each rank gets its share when `shard` (default: when shuffling) is on: of a
    training set, padded so every rank runs as many steps; of an evaluation set, each sample once over
    all ranks (gather the results). `batch_size` is per process. `workers=None`: 1 on the CPU, up to 8
    per process on CUDA; pinned memory on CUDA; persistent workers when there are workers (no restart
    cost per pass)."""
    from nas.engine.distributed import world
    from nas.engine.sampling import EpochSampler, SeededItems
    if len(dataset) == 0:
        source = getattr(dataset, "ann_file", None) \
            or getattr(getattr(dataset, "dataset", None), "ann_file", None)  # a Subset's dataset
        where = f" ({source})" if source else ""
        raise UserError(f"a dataset split is empty after filtering{where}: expected at least one usable "
                        "person annotation; check data.root, the split names and data.max_train/max_val")
    cuda = device is not None and device.type == "cuda"
    w = world() if (shuffle if shard is None else shard) else None
    rank, size = (w.rank, w.size) if w is not None else (0, 1)
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, size, pad=shuffle)
    if workers is None:
        workers = default_workers(cuda, size)
    persistent = workers > 0 and (persistent_workers is None or bool(persistent_workers))
    return DataLoader(SeededItems(dataset, seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, drop_last=drop_last and sampler.per_rank() >= batch_size,
                      persistent_workers=persistent,
                      pin_memory=cuda if pin_memory is None else pin_memory,
                      generator=torch.Generator().manual_seed(seed))  # the process's RNG is not drawn


def default_workers(cuda: bool, processes: int = 1) -> int:
    """Loader processes per training process: 1 on the CPU (the cores compute), else up to 8 per GPU
    from the cores this process may use."""
    if not cuda:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))  # processes sharing this node's cores
    return max(1, min(8, cores // max(local, 1) - 1))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def forever(loader: DataLoader) -> Iterator[Any]:
    """Cycle a loader (the held-out split may be shorter than the training split), each pass in a new
    order when the loader shuffles."""
    passes = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(passes)
        yield from loader
        passes += 1


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
