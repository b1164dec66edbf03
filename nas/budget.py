"""Refuse a network too big for the machine before allocating it.

Every size argument of a space is bounded (the BOUNDS tables in search_spaces/), but members within
those bounds can still be huge together: 64 layers of C=256 DARTS cells, or a modest network at a
4096 x 4096 input. Before an entry point allocates a network, `check_budget` builds it on PyTorch's
meta device (shapes only: no memory, no initialisation work) and runs one forward pass on a meta
input of the requested size at batch 1, to count

- parameters: every `nn.Parameter` of the network;
- activation memory: the bytes of the tensors every leaf module outputs (in-place ops not counted
  twice), about what a training step keeps for its backward pass at batch 1 (a batch of B keeps
  about B times that). Functional ops between modules (additions, concatenations) are not counted,
  so this is an estimate on the low side, kept simple on purpose.

Either count above its limit is a UserError naming the config key that raises it (exit 2).

Defaults (the config keys `max_params_m`, `max_activation_gb`), chosen to admit every published
network these spaces reproduce, and the supernets that search them, with a margin, and to refuse
what cannot fit on one accelerator at batch 1. Measured with this module:
- `max_params_m` 500 (million): the largest pose networks in the seeds' tables are HRNet-W48
  (63.6 M) and SimpleBaseline-ResNet-152 (68.6 M); here PoseNAS L18-C64 has 20.3 M (with the
  shipped cells), S-ViPNAS-Res50 7.3 M, and the largest supernet, the full-size S-ViPNAS-MobileNetV3
  space (genotypes/s_vipnas_mbv3.json), 391 M: its shared weights are stored dense.
- `max_activation_gb` 32: PoseNAS L18-C64 at 384 x 288 keeps 0.56 GB at batch 1 by this count, a
  C=64 L=18 darts_cells supernet at 256 x 192 2.9 GB; the same L18-C64 network at 4096 x 4096 needs
  84 GB and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from nas.config import RunConfig
from nas.errors import UserError
from nas.genotype import MAX_SIDE, size_ok

# The config keys' defaults (the schemas in nas/config.py; every entry point's config has both keys).
DEFAULT_MAX_PARAMS_M = RunConfig.max_params_m
DEFAULT_MAX_ACTIVATION_GB = RunConfig.max_activation_gb


@dataclass(frozen=True)
class NetworkSize:
    params: int
    activation_bytes: int  # leaf-module outputs of one forward pass at batch 1


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def build_on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    """The network `make()` builds, with every parameter and buffer on the meta device (no memory)."""
    with torch.device("meta"):
        return make()


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def activation_bytes(net: nn.Module, input_size: Sequence[int]) -> int:
    """Bytes of the tensors the leaf modules of `net` (on the meta device) output in one forward pass
    on a (1, 3, H, W) input (a video network: on one cycle's clip, (1, 1 + T, 3, H, W)); a module that returns
    its input (in place) adds nothing."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        fresh = [t for t in _tensors(output) if not any(t is i for i in _tensors(inputs))]
        total += sum(t.numel() * t.element_size() for t in fresh)

    handles = [m.register_forward_hook(count) for m in net.modules() if next(m.children(), None) is None]
    x = torch.empty(1, 3, *input_size, device="meta")
    if hasattr(net, "step") and hasattr(net, "cycle"):  # a video network: one cycle's clip (key + light frames)
        x = x.unsqueeze(1).expand(1, net.cycle + 1, 3, *input_size)
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _limit(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def check_budget(make: Callable[[], nn.Module], input_size: Sequence[int],
                 max_params_m: float = DEFAULT_MAX_PARAMS_M,
                 max_activation_gb: float = DEFAULT_MAX_ACTIVATION_GB) -> NetworkSize:
    """Measure the network `make()` would build (on the meta device) and refuse it, with a UserError
    naming the config key, when it is above either limit. Call it before allocating the network."""
    if not size_ok(list(input_size)):
        raise UserError(f"input_size must be [height, width] in integers from 1 to {MAX_SIDE}, got {list(input_size)}")
    max_params_m = _limit("max_params_m", max_params_m)
    max_activation_gb = _limit("max_activation_gb", max_activation_gb)
    net = build_on_meta(make)
    params = count_params(net)
    if params > max_params_m * 1e6:  # refused before the (slower) forward pass
        raise UserError(f"the network has {params / 1e6:,.2f} M parameters, above max_params_m="
                        f"{max_params_m:g}; shrink its space_args, or raise max_params_m if the machine has room")
    size = NetworkSize(params, activation_bytes(net, input_size))
    if size.activation_bytes > max_activation_gb * 1e9:
        h, w = input_size
        raise UserError(f"the network needs about {size.activation_bytes / 1e9:,.2f} GB of activations at batch 1 "
                        f"on a {h}x{w} input, above max_activation_gb={max_activation_gb:g}; use a smaller "
                        f"input_size or network, or raise max_activation_gb if the machine has room")
    return size
