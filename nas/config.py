"""Typed schemas of the top-level configs, and the check of every config group before any work.

`search.yaml`, `retrain.yaml`, ... list these schemas first in their defaults, so a wrong type
(`epochs=abc`) or an unknown key (`epoch=3`) fails when Hydra composes, naming the key.
The groups (data, search_space, strategy, optimizer, criterion) have no schema of their own: their keys
are the keyword arguments of their `_target_`, and `check_config` (called by every entry point through
`nas.cli.user_errors(cfg)`) holds them against that signature and its type hints before any work.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from nas.errors import UserError


@dataclass
class RunConfig:
    data: Any = None
    logger: Any = None  # the `logger` group: none (null or empty), csv or wandb (nas/tracking.py)
    seed: int = 0
    device: str = "auto"
    epochs: int = 1
    batch_size: int = 16
    num_workers: Optional[int] = 1  # None: 1 on the CPU, up to 8 per process on CUDA
    pin_memory: Optional[bool] = None  # None: on CUDA
    persistent_workers: Optional[bool] = None  # None: whenever num_workers > 0
    threads: Optional[int] = None
    channels_last: bool = True  # NHWC weights and activations (nas.engine.runtime.to_memory_format)
    amp: Optional[str] = None  # mixed precision: bf16, fp16 (with a GradScaler) or None (fp32)
    checkpoint_every_min: Optional[float] = None  # also checkpoint inside epochs every N minutes
    requeue: bool = True  # on SLURM's signal: checkpoint, then requeue the job (scontrol / submitit)
    resume: bool = False
    # keys (or prefixes: `optimizer`) a resume may change; recorded in <run_dir>/resume_changes.jsonl
    resume_allow_changes: list[str] = field(default_factory=list)
    run_dir: str = "runs/run"
    max_steps_per_epoch: Optional[int] = None
    max_params_m: float = 500.0  # network size budget, checked before it is built (nas/budget.py)
    max_activation_gb: float = 32.0


@dataclass
class SearchConfig(RunConfig):
    search_space: Any = None
    strategy: Any = None
    arch_fraction: float = 0.5
    early_stop: Optional[str] = None  # darts_plus, skip_rise or None (nas.engine.search_loop.EarlyStop)
    stop_on_skip_rise: bool = False   # deprecated alias of early_stop=skip_rise
    score_images: Optional[int] = 100
    score_videos: int = 6  # video search: held-out training videos that score candidates online
    key_checkpoint: Optional[str] = None  # video search: the key network's trained best.pt (frozen)
    train_key: Optional[bool] = None  # None: train the key network unless key_checkpoint is given
    criterion: Any = None


@dataclass
class RetrainConfig(RunConfig):
    genotype: str = "???"
    space_args: dict = field(default_factory=dict)
    input_size: Optional[list] = None
    heatmap_size: Optional[list] = None
    optimizer: Any = None
    lr_scaling: Optional[str] = None  # linear: lr x global batch / lr_base_batch (Goyal et al. 2017)
    lr_base_batch: int = 32  # the global batch the configured lr was tuned for
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    compile: bool = False  # torch.compile the network for training
    lr_min: float = 0.0
    lr_schedule: str = "cosine"  # or multistep (nas/engine/schedule.py)
    lr_steps: list = field(default_factory=list)  # multistep: epochs at which the lr is multiplied by lr_factor
    lr_factor: float = 0.1
    warmup_iters: int = 0  # linear warm-up over this many optimizer steps, from warmup_ratio x lr
    warmup_ratio: float = 0.001
    supervision: Optional[list] = None  # per heatmap output: {sigma, weight, ohkm_topk} (nas/pose/loss.py)
    pretrained: Optional[str] = None  # a local ImageNet weights file for the network's backbone
    grad_clip: Optional[float] = None
    eval_every: int = 5
    flip_test: bool = True
    decode: str = "quarter"
    eval_batch_size: int = 64
    key_checkpoint: Optional[str] = None  # temporal genotype: the key network's trained best.pt (frozen)
    train_key: Optional[bool] = None  # None: train the key network unless key_checkpoint is given
    criterion: Any = None


@dataclass
class EvaluateConfig:
    data: Any = None
    checkpoint: str = "???"
    device: str = "auto"
    num_workers: int = 1
    threads: Optional[int] = None
    flip_test: bool = True
    decode: str = "quarter"
    eval_batch_size: int = 64
    out_dir: Optional[str] = None
    max_params_m: float = 500.0  # network size budget, checked before it is built (nas/budget.py)
    max_activation_gb: float = 32.0


@dataclass
class ProfileConfig:
    """python -m nas.profile: size and speed of a genotype's network, no data, no training."""
    genotype: str = "???"
    space_args: dict = field(default_factory=dict)
    input_size: Optional[list] = None
    heatmap_size: Optional[list] = None  # unused by profiling; lets the retrain presets apply unchanged
    device: str = "auto"
    threads: Optional[int] = None
    batch_size: int = 1
    warmup: int = 10
    runs: int = 50
    latency: bool = True
    drift_correction: bool = True
    latency_table: Optional[str] = None
    table_device: str = "cpu"
    out: Optional[str] = None
    max_params_m: float = 500.0  # network size budget, checked before it is built (nas/budget.py)
    max_activation_gb: float = 32.0


@dataclass
class StudyConfig:
    """python -m nas.study: runs of nas.search / nas.retrain as Hydra multiruns, and their statistics."""
    study: Any = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run_dir: str = "runs/study/run"
    resume: bool = False
    resume_allow_changes: list[str] = field(default_factory=list)  # as for runs: keys a resume may change
    launcher: list[str] = field(default_factory=list)  # overrides added to every multirun (hydra/launcher=...)
    poll_s: float = 30.0  # how often the report is refreshed while runs go on
    bootstrap: dict = field(default_factory=lambda: {"level": 0.95, "resamples": 10000, "seed": 0})


def run_stamp(pattern: str) -> str:
    """`${run_stamp:%Y%m%d-%H%M%S}`: like Hydra's `${now:...}`, but under torchrun (or a multi-task SLURM
    job) every rank gets rank 0's time, so a run directory named after it is the same on all ranks: the
    time is sent once, when the process group is joined (the first call joins it if need be), never from
    here, since the ranks may resolve the config at different points."""
    from nas.engine.distributed import start_time
    return datetime.fromtimestamp(start_time()).strftime(pattern)


def register() -> None:
    from nas.sweeps import register_launchers
    register_launchers()  # hydra/launcher=local|submitit_local|slurm: -m sweeps that survive a failed job
    # a study names each retrain run after its genotype file: hydra.sweep.subdir=${path_stem:${genotype}}
    OmegaConf.register_new_resolver("path_stem", lambda path: Path(str(path)).stem, replace=True)
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    store = ConfigStore.instance()
    store.store(name="study_schema", node=StudyConfig)
    store.store(name="search_schema", node=SearchConfig)
    store.store(name="retrain_schema", node=RetrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="profile_schema", node=ProfileConfig)


# ---- checks before any work -------------------------------------------------------------------------
# The groups (data, search_space, strategy, optimizer, criterion...) have no dataclass schema: their keys
# are the keyword arguments of their `_target_`. `check_config` holds every node that has a `_target_`
# against that signature and its type hints, so a new space or strategy is checked with no schema to write.

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
MIN_VALUES = {"epochs": 1, "batch_size": 1, "eval_batch_size": 1, "max_steps_per_epoch": 1, "score_images": 1, "score_videos": 1,
              "num_workers": 0, "threads": 1, "seed": 0, "eval_every": 0, "lr_min": 0.0, "grad_clip": 0.0,
              "runs": 1, "warmup": 0, "num_images": 0, "max_samples": 0}


def check_config(cfg: DictConfig) -> None:
    """Refuse, before any work, a composed config whose values cannot be right: a top-level count out
    of range, and in every node with a `_target_` an unknown key or a value of the wrong type
    (raises UserError naming the key)."""
    _check_ranges(cfg)
    _walk(cfg, "")


def _check_ranges(cfg: DictConfig) -> None:
    for key, low in MIN_VALUES.items():
        value = cfg.get(key) if key in cfg and not OmegaConf.is_missing(cfg, key) else None
        if isinstance(value, (int, float)) and value < low:
            raise UserError(f"{key}={value} is out of range: it must be >= {low}")
    fraction = cfg.get("arch_fraction")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise UserError(f"arch_fraction={fraction} is out of range: it must be between 0 and 1 (exclusive)")


def _walk(node: Any, path: str) -> None:
    """Check every `_target_` node at or below `node` (DictConfig or ListConfig)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, path)
            return
        for key in node:
            if not OmegaConf.is_missing(node, key) and not OmegaConf.is_interpolation(node, key):
                _walk(node[key], _join(path, str(key)))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_target(node: DictConfig, path: str) -> None:
    """Keys against the signature of `_target_`, values against its type hints."""
    target = node._target_
    try:
        obj = get_object(target)
        params = inspect.signature(obj).parameters
    except Exception as err:  # noqa: BLE001 - any import failure is the user's `_target_`
        raise UserError(f"{_join(path, '_target_')}={target!r} cannot be loaded ({type(err).__name__}: "
                        f"{err}); give an importable class or function") from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    hints = _hints(obj, params)
    for key in (str(k) for k in node if k not in HYDRA_KEYS):
        where = _join(path, key)
        if key not in named:
            if takes_any:
                continue
            raise UserError(f"{where} is not an option of {target}; its options are {', '.join(named)}")
        if OmegaConf.is_missing(node, key):
            continue  # reported as unset where it is read
        child = node[key]
        _walk(child, where)
        value = OmegaConf.to_container(child, resolve=True) if isinstance(child, (DictConfig, ListConfig)) \
            else child
        if not _fits(value, hints.get(key, Any)):
            raise UserError(f"{where}={_show(value)} has the wrong type: {target} declares "
                            f"{key}: {_describe(hints[key])}")
    _try_optimizer(node, obj, path)


def _hints(obj: Any, params: Any) -> dict[str, Any]:
    """Resolved type hints of a class's __init__ or a function; a hint that cannot be resolved is Any."""
    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - e.g. a name imported only under TYPE_CHECKING
        return {n: p.annotation for n, p in params.items()
                if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str)}


def _try_optimizer(node: DictConfig, obj: Any, path: str) -> None:
    """An optimizer factory (`_partial_: true`) is built once on a dummy parameter, so that torch's own
    checks (negative lr, momentum, betas out of [0, 1)...) fail here rather than after the data loads."""
    import torch
    if not (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and node.get("_partial_")):
        return
    try:
        instantiate(node)([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError, InstantiationException) as err:
        message = str(err.__cause__ or err).splitlines()[0]
        raise UserError(f"{path}: {message} (check the values under {path})") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value (from YAML or an override) can be passed where `hint` is declared."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, dict) and "_target_" in value:
        return True  # an object built by Hydra; its own keys are checked by _check_target
    if hint is Any or isinstance(hint, (typing.TypeVar, str, typing.ForwardRef)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is None or hint is type(None):
        return value is None
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    base = origin or hint
    if base in (list, tuple, set, frozenset) or base in _SEQUENCES:
        return isinstance(value, (list, tuple)) and _items_fit(value, args, base is tuple)
    if base in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return isinstance(value, dict) and all(_fits(k, (args or (Any,))[0]) and _fits(v, (args or (Any, Any))[1])
                                               for k, v in value.items())
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):  # a nested config with known keys
        return isinstance(value, dict) and _record_fits(value, typing.get_type_hints(hint))
    if base is collections.abc.Callable:
        return False  # a plain value is not callable: a nested config with a `_target_` is needed
    return not _never_plain(hint)


def _items_fit(value: list | tuple, args: tuple, fixed: bool) -> bool:
    if fixed and args and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    return not args or all(_fits(v, args[0]) for v in value)


def _record_fits(value: dict, fields: dict[str, Any]) -> bool:
    """A dict against the fields of a TypedDict or dataclass: no unknown key, each value of its type."""
    return set(value) <= set(fields) and all(_fits(v, fields[k]) for k, v in value.items())


def _never_plain(hint: Any) -> bool:
    """Types no YAML value can be: tensors and modules (they are built or passed in at run time)."""
    import torch
    return inspect.isclass(hint) and issubclass(hint, (torch.Tensor, torch.nn.Module))


_SCALARS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}
_SEQUENCES = (collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable,
              collections.abc.Collection)


def _describe(hint: Any) -> str:
    """A type hint as Python writes it, without module prefixes: `int | None`, `Sequence[int]`..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is None or hint is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _describe(a) for a in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if inner else name
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
