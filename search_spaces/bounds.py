"""Type and range checks for the size arguments of the search spaces.

A genotype file comes from anywhere, and its `space_args` go straight to a space's constructor:
`init_channels=1e6` or a stage of width 1e7 would allocate without limit, `-4` would fail deep inside
torch. Every space therefore lists, in a `BOUNDS` table at the top of its file, the range of each
integer argument, with the published network that sets its maximum (the maximum is that value
times a margin, so experiments beyond the papers still fit). `check_args` applies a table; the
entry points then hold whole networks to a parameter and activation budget (nas/budget.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

MAX_CHOICES = 64  # entries in one choice list (the product of a stage's lists is enumerated)


class BoundError(ValueError):
    """A space argument of the wrong type or out of range; `key` names it (e.g. 'width_choices[2][0]')."""

    def __init__(self, key: str, detail: str):
        self.key, self.detail = key, detail
        super().__init__(f"{key}: {detail}")


@dataclass(frozen=True)
class Bound:
    """An integer argument in [low, high]; `shape` says how it is nested: 'int' (one value),
    'list' (a list of them) or 'lists' (a list per stage); `why` names the published network
    behind `high`; `optional` lets the value be null."""
    low: int
    high: int
    why: str
    shape: str = "int"
    optional: bool = False


def is_int(value: Any) -> bool:
    """A JSON/YAML integer: not a bool (True is an int to Python), not a float such as 1e6."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_list(value: Any) -> bool:
    """A list, tuple or OmegaConf ListConfig (what Hydra passes), not a string."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def check_int(key: str, value: Any, bound: Bound) -> int:
    """`value` itself, when it is an integer in the bound's range; else BoundError naming `key`."""
    if not is_int(value):
        raise BoundError(key, f"must be an integer, got {value!r} ({type(value).__name__})")
    if not bound.low <= value <= bound.high:
        raise BoundError(key, f"{value} is outside [{bound.low}, {bound.high}] (maximum: {bound.why})")
    return value


def _check_list(key: str, values: Any, bound: Bound) -> list[int]:
    if not is_list(values) or not values or len(values) > MAX_CHOICES:
        raise BoundError(key, f"must be a non-empty list of at most {MAX_CHOICES} integers, got {values!r}")
    return [check_int(f"{key}[{i}]", v, bound) for i, v in enumerate(values)]


def check_value(key: str, value: Any, bound: Bound) -> Any:
    """One argument against its bound, following its shape."""
    if value is None and bound.optional:
        return None
    if bound.shape == "int":
        return check_int(key, value, bound)
    if bound.shape == "list":
        return _check_list(key, value, bound)
    if not is_list(value) or not value or len(value) > MAX_CHOICES:
        raise BoundError(key, f"must be a non-empty list (one entry per stage), got {value!r}")
    return [_check_list(f"{key}[{i}]", v, bound) for i, v in enumerate(value)]


def check_args(args: Mapping[str, Any], table: Mapping[str, Bound]) -> dict[str, Any]:
    """A copy of `args` whose arguments named in `table` are checked against their bounds
    (BoundError names the first bad one) and made plain lists (a tuple default becomes a list)."""
    return {**args, **{key: check_value(key, args[key], bound) for key, bound in table.items() if key in args}}

