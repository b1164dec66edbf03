"""Data-parallel runs on torch.distributed: one process per device, the same command with or without
torchrun (or a SLURM / submitit job with several tasks).

- `setup(device)` reads the launcher's environment (torchrun's RANK / LOCAL_RANK / WORLD_SIZE, or
  submitit's job environment under SLURM), joins the process group (NCCL for CUDA, gloo for the CPU)
  and returns this process's device (`cuda:LOCAL_RANK` under CUDA). Without those variables it is a
  single process and nothing here communicates.
- Rank 0 alone writes the run directory; every rank reads the same checkpoints.
- Gradients are averaged with `average_gradients` (one flat all-reduce) where DistributedDataParallel
  cannot be used: the search strategies take architecture gradients with `torch.autograd.grad`, which
  DDP does not reduce, and the second-order DARTS step needs three reductions of its own. Retrain wraps
  its network in DDP (bucketed reduction overlapped with the backward pass).
- `all_gather_objects` / `broadcast_object` move plain Python values (predictions, candidate scores,
  the run directory's name).
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

from nas.errors import UserError

log = logging.getLogger("posenas")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()
_start: list[float] = []  # the run's start time, rank 0's on every rank (set once per process)


def world() -> World:
    return _world


def is_main() -> bool:
    return _world.rank == 0


def _launcher_env() -> World | None:
    """The ranks a launcher gave this process, exported to torchrun's variables; None when single."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun, or a user who exported them
        size = int(os.environ["WORLD_SIZE"])
        return World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), size) if size > 1 else None
    if os.environ.get("SUBMITIT_EXECUTOR") and int(os.environ.get("SLURM_NTASKS", os.environ.get(
            "SUBMITIT_LOCAL_NTASKS", "1")) or 1) > 1:
        try:  # submitit's job environment (SLURM or its local executor) -> RANK, MASTER_ADDR, ...
            from submitit.helpers import TorchDistributedEnvironment
        except ImportError as err:
            raise UserError("this is a multi-task submitit job but submitit is not installed; "
                            "pip install hydra-submitit-launcher") from err
        env = TorchDistributedEnvironment().export()
        return World(env.rank, env.local_rank, env.world_size) if env.world_size > 1 else None
    return None


def init_process_group() -> World:
    """Join the launcher's process group once (idempotent); a single process returns World()."""
    global _world
    if dist.is_available() and dist.is_initialized():
        return _world
    found = _launcher_env()
    if found is None:
        return _world
    cuda = torch.cuda.is_available() and os.environ.get("POSENAS_DIST_BACKEND", "") != "gloo"
    if cuda:
        torch.cuda.set_device(found.local_rank % torch.cuda.device_count())
    # one group serving both: NCCL for CUDA tensors, gloo for the CPU objects (run dir, predictions)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(
        minutes=float(os.environ.get("POSENAS_DIST_TIMEOUT_MIN", 30))))
    _world = World(dist.get_rank(), found.local_rank, dist.get_world_size())
    # a collective every rank makes at the same point (here, and nowhere lazily): rank 0's clock for all
    _start[:] = [broadcast_object(time.time())]
    return _world


def start_time() -> float:
    """The run's start time, the same on every rank: rank 0's clock, fixed when the process group is joined
    (or, in one process, at the first call). `${run_stamp:...}` names run directories with it."""
    if not _start:
        init_process_group()
    if not _start:
        _start.append(time.time())
    return _start[0]


def setup(device_name: str) -> tuple[World, torch.device]:
    """Join the process group (if launched with several processes) and pick this rank's device.

    `device=auto` is `cuda:LOCAL_RANK` under CUDA, else the CPU; an explicit `cuda:N` is refused with
    several processes (each rank owns the device of its local rank)."""
    from nas.engine.runtime import pick_device
    w = init_process_group()
    device = pick_device(device_name)
    if w.enabled and device.type == "cuda":
        if device.index is not None and device_name != "auto":
            raise UserError(f"device={device_name} names one GPU, but {w.size} processes run: use device=auto "
                            "or device=cuda (each rank takes the GPU of its LOCAL_RANK)")
        device = torch.device("cuda", w.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if w.enabled and not is_main():  # the other ranks only report problems
        quiet_logging()
    return w, device


def quiet_logging() -> None:
    """Ranks other than 0 log warnings only, and to the console alone (Hydra's log file is rank 0's)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    logging.getLogger("posenas").setLevel(logging.WARNING)


def shutdown(wait: bool = False) -> None:
    """Leave the process group. `wait=True` (a run that finished normally): a barrier first, so no rank
    tears its connections down while another is still using them (a 2-rank gloo test process aborted in
    its teardown, "terminate called without an active exception", twice in ~20 CI runs, after its results
    were written). Not after an error: the other ranks may be gone, and a barrier would wait for them."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if _world.enabled:
        dist.barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank `src`'s value on every rank."""
    if not _world.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def all_gather_objects(value: T) -> list[T]:
    """Every rank's value, in rank order (a one-element list in a single process)."""
    if not _world.enabled:
        return [value]
    out: list[Any] = [None] * _world.size
    dist.all_gather_object(out, value)
    return out


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when it is true on at least one (e.g. a signal seen by one process)."""
    if not _world.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_scalar(value: float, device: torch.device | None = None) -> float:
    """The mean over ranks of a per-rank number (e.g. the loss of each rank's share of the batch)."""
    if not _world.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return float(t.item()) / _world.size


def _comm_device(device: torch.device | None) -> torch.device:
    return device if device is not None and device.type == "cuda" else torch.device("cpu")


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's .grad by its mean over ranks, in one flat all-reduce.

    A parameter with no gradient on any rank keeps None (so optimizers skip it, as in one process);
    one with a gradient on some ranks only gets zeros where it had none, then the mean."""
    if not _world.enabled:
        return
    params = [p for p in params]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_comm_device(device))
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist()) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_tensors([p.grad for p in used])


def average_tensors(tensors: Sequence[torch.Tensor | None]) -> None:
    """In place: each tensor becomes its mean over ranks (None entries are skipped). One all-reduce per
    dtype and device, on a flat copy, so the memory layout of each tensor (NHWC or not) is kept."""
    if not _world.enabled:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        if t is not None:
            groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= _world.size
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view(t.shape))  # logical order both ways: any layout
            offset += n


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Rank `src`'s parameters and buffers on every rank (the same start, or the same BatchNorm
    statistics before an evaluation)."""
    if not _world.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every size-th item from its rank (all of them in one process)."""
    return list(items[_world.rank::_world.size])


def gather_sharded(mine: Sequence[T], total: int) -> list[T]:
    """Undo `shard`: every rank's share, put back in the original order (all ranks get the list)."""
    parts = all_gather_objects(list(mine))
    out: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        for i, value in enumerate(part):
            out[rank + i * len(parts)] = value
    return out
