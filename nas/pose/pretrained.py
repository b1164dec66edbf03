"""ImageNet (or any) initialisation of a network's backbone from a local checkpoint file.

Nothing is downloaded at run time: `pretrained=/path/to/file.pth` names a file the user fetched
(README, "ImageNet initialisation"). The file may be a plain state dict, or a dict holding one under
"state_dict" or "model" (training checkpoints); a DataParallel "module." prefix is dropped. `rename` maps
a key of the file to a key of the module (or None: the tensor is not for this network, e.g. a classifier).
A tensor is loaded when its renamed key exists in the module with the same shape; everything else is
reported, so a user sees at once whether the file fitted: loaded / mismatched (same name, other shape) /
missing (module tensors the file did not provide) / unused (file tensors the module has no place for).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from nas.errors import UserError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (weights only: no code in the file is run)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"pretrained weights not found: {path}; download the file (README, 'ImageNet "
                        "initialisation') and pass its path as pretrained=")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code, not a torch file at all
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"cannot read pretrained weights {path}: {type(err).__name__}: {first}; check the "
                        "file is a PyTorch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict of tensors; pass a PyTorch weights file (.pth)")
    return {(k[len("module."):] if k.startswith("module.") else k): v
            for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_pretrained(module: nn.Module, path: str | Path, rename: Callable[[str], str | None] | None = None,
                    what: str = "backbone") -> dict[str, list[str]]:
    """Copy the file's matching tensors into `module`; returns the report (lists of keys).

    Raises UserError when nothing at all fits (the wrong file for this network), so a run never trains
    from scratch believing it was initialised."""
    state = read_state_dict(path)
    own = module.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "mismatched": [], "missing": [], "unused": []}
    updates: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = rename(key) if rename is not None else key
        if target is None or target not in own:
            report["unused"].append(key)
        elif own[target].shape != value.shape:
            report["mismatched"].append(f"{key}: file {tuple(value.shape)} vs network {tuple(own[target].shape)}")
        else:
            updates[target] = value
            report["loaded"].append(target)
    report["missing"] = [k for k in own if k not in updates and not k.endswith("num_batches_tracked")]
    if not any(not key.endswith("num_batches_tracked") for key in updates):  # BN counters fit anything
        raise UserError(f"no tensor of {path} fits the {what} ({len(state)} in the file, e.g. "
                        f"{next(iter(state))!r}); is it the checkpoint for this network?")
    with torch.no_grad():
        for key, value in updates.items():
            own[key].copy_(value.to(own[key].dtype))
    return report


def describe(report: dict[str, list[str]], path: str | Path, what: str = "backbone") -> str:
    """One line for the log, then the keys that did not load (at most 5 of each kind)."""
    lines = [f"{what} initialised from {path}: {len(report['loaded'])} tensors loaded, "
             f"{len(report['mismatched'])} of another shape, {len(report['missing'])} not in the file, "
             f"{len(report['unused'])} of the file unused"]
    for kind in ("mismatched", "missing", "unused"):
        keys = report[kind]
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            lines.append(f"  {kind}: {', '.join(keys[:5])}{more}")
    return "\n".join(lines)
