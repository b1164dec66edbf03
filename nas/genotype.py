"""The genotype file: what a search emits and retrain consumes.

Format (version 1), kept small and human-readable:
    {"format": "posenas.genotype", "version": 1, "space": "<name in conf/search_space/>",
     "space_args": {...}, "genotype": {...space specific...},
     "input_size": [H, W], "heatmap_size": [h, w], "provenance": {...}}
Loading checks the envelope here; whether ops and indices belong to the space is the space's
`validate`. Errors are `GenotypeError` with a message that names the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.utils.io import atomic_write_text

FORMAT = "posenas.genotype"
VERSION = 1
_REQUIRED = ("format", "version", "space", "space_args", "genotype", "input_size", "heatmap_size")
_OPTIONAL = ("provenance",)
_SPACE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Largest input or heatmap side accepted (pixels): the pose literature's largest inputs are 1024
# on a side (bottom-up HigherHRNet); x4. The entry points' budget (nas/budget.py) bounds the rest.
MAX_SIDE = 4096


class GenotypeError(ValueError):
    """A genotype file or object that cannot be used; the message names the problem."""


@dataclass
class Genotype:
    space: str
    genotype: dict[str, Any]
    space_args: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (256, 192)
    heatmap_size: tuple[int, int] = (64, 48)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "space": self.space,
                "space_args": self.space_args, "genotype": self.genotype,
                "input_size": list(self.input_size), "heatmap_size": list(self.heatmap_size),
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: Any) -> "Genotype":
        _check_envelope(data)
        return cls(space=data["space"], genotype=data["genotype"], space_args=data["space_args"],
                   input_size=tuple(data["input_size"]), heatmap_size=tuple(data["heatmap_size"]),
                   provenance=data.get("provenance", {}))


def size_ok(value: Any) -> bool:
    """[height, width] in integers from 1 to MAX_SIDE (not bools, not floats such as 1e6)."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in value))


def _check_envelope(data: Any) -> None:
    if not isinstance(data, dict):
        raise GenotypeError("the file must hold a JSON object at the top level")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise GenotypeError(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise GenotypeError(f"unknown field(s): {', '.join(unknown)}")
    if data["format"] != FORMAT:
        raise GenotypeError(f"field 'format' is {data['format']!r}, expected {FORMAT!r}")
    if data["version"] != VERSION:
        raise GenotypeError(f"field 'version' is {data['version']!r}; this posenas reads version "
                            f"{VERSION} (upgrade posenas for newer files)")
    if not isinstance(data["space"], str) or not _SPACE_NAME.match(data["space"]):
        raise GenotypeError(f"field 'space' must be a search-space name like 'darts_cells', "
                            f"got {data['space']!r}")
    for key in ("space_args", "genotype"):
        if not isinstance(data[key], dict):
            raise GenotypeError(f"field '{key}' must be a JSON object")
    for key in ("input_size", "heatmap_size"):
        if not size_ok(data[key]):
            raise GenotypeError(f"field '{key}' must be [height, width] in integers from 1 to "
                                f"{MAX_SIDE}, got {data[key]!r}")
    if not isinstance(data.get("provenance", {}), dict):
        raise GenotypeError("field 'provenance' must be a JSON object")


def load(path: str | Path) -> Genotype:
    """Read and check a genotype file (envelope only; see `nas.spaces.resolve` for the space)."""
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"genotype file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GenotypeError(f"{path} is not valid JSON ({err})") from None
    try:
        return Genotype.from_dict(data)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


def save(genotype: Genotype, path: str | Path) -> Path:
    """Write the genotype atomically (a reader never sees half a file)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(genotype.to_dict(), indent=2) + "\n")
    return path
