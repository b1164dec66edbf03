"""Search spaces resolve by name through conf/search_space/ only.

A genotype file names its space; the name must be one of the YAML files shipped in
conf/search_space/, whose `_target_` names the class. Nothing in a genotype file can make the
program import or call anything else, and `space_args` are passed as plain keyword arguments
(never through Hydra's recursive instantiation). Each space checks the types and ranges of its
arguments against the `BOUNDS` table at the top of its file (search_spaces/bounds.py).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

import conf as _conf_pkg
from nas.genotype import Genotype, GenotypeError
from search_spaces.bounds import BoundError

CONF_DIR = Path(_conf_pkg.__file__).resolve().parent


def space_names() -> list[str]:
    """Names of the available search spaces (the files in conf/search_space/)."""
    return sorted(p.stem for p in (CONF_DIR / "search_space").glob("*.yaml"))


def space_config(name: str) -> dict[str, Any]:
    """The shipped config of space `name`, as a plain dict (with its `_target_`)."""
    if name not in space_names():
        raise GenotypeError(f"field 'space': unknown search space {name!r}; "
                            f"available: {', '.join(space_names())}")
    cfg = OmegaConf.load(CONF_DIR / "search_space" / f"{name}.yaml")
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise GenotypeError(f"field '{where}' has a forbidden key {key!r}")
            _plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise GenotypeError(f"field '{where}' must hold plain JSON values")


def build_space(name: str, space_args: dict[str, Any]) -> Any:
    """Instantiate space `name` with `space_args` over its shipped defaults."""
    cfg = space_config(name)
    cls = get_class(cfg.pop("_target_"))
    _plain(space_args, "space_args")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(space_args) - set(params))
    if unknown:
        raise GenotypeError(f"field 'space_args': {name} does not take {', '.join(unknown)}; "
                            f"it takes {', '.join(p for p in params if p != 'self')}")
    try:
        return cls(**{**cfg, **space_args})
    except BoundError as err:  # a size argument of the wrong type or out of the space's BOUNDS table
        raise GenotypeError(f"field 'space_args.{err.key}': {err.detail}") from None
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"field 'space_args': {err}") from None


def resolve(genotype: Genotype, overrides: dict[str, Any] | None = None) -> Any:
    """The space a genotype belongs to, checked: raises GenotypeError naming the bad field."""
    space = build_space(genotype.space, {**genotype.space_args, **(overrides or {})})
    space.validate(genotype)
    return space
