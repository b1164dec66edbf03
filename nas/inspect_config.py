"""Typed schema of conf/inspect.yaml (python -m nas.data), registered by that entry point.

Kept apart from nas/config.py so the inspector can grow its options without touching the training
schemas; `register()` stores it in Hydra's ConfigStore as `inspect_schema`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class InspectConfig:
    data: Any = None
    split: Optional[str] = None        # val, train, both; null = every split whose annotations exist
    max_samples: Optional[int] = None  # cap per split (the first N instances); null = all
    batch_size: int = 32
    num_workers: int = 1
    threads: Optional[int] = None
    augment: bool = False              # train split only: load it with its augmentation on
    num_images: int = 8                # PNGs of crops with targets and skeleton, per split
    out_dir: Optional[str] = None      # null = runs/inspect/<time>


def register() -> None:
    ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)
