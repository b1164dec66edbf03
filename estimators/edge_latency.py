"""Per-edge op latency tables of a gradient search space (latency-aware DARTS, `strategy.latency_weight`).

A table holds, per cell type, an (edges, ops) array of forward milliseconds: what each candidate op
on each edge costs in the network the search emits (`DartsCellsSpace.edge_latency` measures it). The
search writes the table it used to `<run_dir>/edge_latency.json`; `strategy.latency_table=<file>`
searches with a saved table instead of timing anew, so a search can be repeated bit for bit on another
machine, or run on one device for another (the FBNet way: measure on the target once, search anywhere).

File: {"format": "posenas.edge_latency", "version": 1, "about": {space, primitives, input_size, width,
device, threads, torch}, "cells": {cell type: [[ms per op] per edge]}}. A table is refused for a search
whose primitives, input size, width or edge counts differ from those it was measured for.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nas.errors import UserError
from nas.utils.io import atomic_write_text

FORMAT, VERSION = "posenas.edge_latency", 1
MATCHED = ("space", "primitives", "input_size", "width")  # what a table must agree on with the search


def save_edge_latency(path: str | Path, table: dict[str, torch.Tensor], about: dict[str, Any]) -> Path:
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "about": about,
           "cells": {kind: t.tolist() for kind, t in table.items()}}  # float32 -> shortest repr: loads back exactly
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_edge_latency(path: str | Path, about: dict[str, Any],
                      shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The table in `path`, checked against the search's `about` (the MATCHED keys) and the (edges,
    ops) shape of each cell type; a UserError saying what differs otherwise."""
    path = Path(path)
    redo = "measure a table on this search with strategy.latency_table=null"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"strategy.latency_table={path}: no such file; {redo}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"strategy.latency_table={path} is not a readable JSON file ({e}); {redo}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise UserError(f"{path} is not a {FORMAT} version {VERSION} file; {redo}")
    saved = doc.get("about") if isinstance(doc.get("about"), dict) else {}
    for key in MATCHED:
        if saved.get(key) != about.get(key):
            raise UserError(f"latency table {path} was measured for {key}={saved.get(key)!r}, this search has "
                            f"{about.get(key)!r}; {redo}")
    cells = doc.get("cells") if isinstance(doc.get("cells"), dict) else {}
    table = {}
    for kind, shape in shapes.items():
        try:
            t = torch.tensor(cells[kind], dtype=torch.float32)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"latency table {path} has no valid entry for cell type {kind!r}; {redo}") from None
        if tuple(t.shape) != tuple(shape) or not torch.isfinite(t).all() or (t < 0).any():
            raise UserError(f"latency table {path}: cell type {kind!r} must be {shape[0]} edges x {shape[1]} "
                            f"finite, non-negative times; {redo}")
        table[kind] = t
    return table
