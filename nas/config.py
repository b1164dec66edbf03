"""Typed schemas of the top-level configs, registered in Hydra's ConfigStore.

`search.yaml` and `retrain.yaml` list these schemas first in their defaults, so a wrong type
(`epochs=abc`) or an unknown key (`epoch=3`) fails before any work starts, naming the key.
The groups (data, search_space, strategy, optimizer) stay free-form: their keys are the
constructor arguments of their `_target_`, checked when instantiated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RunConfig:
    data: Any = None
    seed: int = 0
    device: str = "auto"
    epochs: int = 1
    batch_size: int = 16
    num_workers: int = 1
    threads: Optional[int] = None
    resume: bool = False
    run_dir: str = "runs/run"
    max_steps_per_epoch: Optional[int] = None


@dataclass
class SearchConfig(RunConfig):
    search_space: Any = None
    strategy: Any = None
    arch_fraction: float = 0.5
    early_stop: Optional[str] = None  # darts_plus, skip_rise or None (nas.engine.search_loop.EarlyStop)
    stop_on_skip_rise: bool = False   # deprecated alias of early_stop=skip_rise
    score_images: Optional[int] = 100
    criterion: Any = None


@dataclass
class RetrainConfig(RunConfig):
    genotype: str = "???"
    space_args: dict = field(default_factory=dict)
    input_size: Optional[list] = None
    heatmap_size: Optional[list] = None
    optimizer: Any = None
    lr_min: float = 0.0
    grad_clip: Optional[float] = None
    eval_every: int = 5
    flip_test: bool = True
    decode: str = "quarter"
    eval_batch_size: int = 64
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
    latency_table: Optional[str] = None
    table_device: str = "cpu"
    out: Optional[str] = None


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="search_schema", node=SearchConfig)
    store.store(name="retrain_schema", node=RetrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="profile_schema", node=ProfileConfig)
