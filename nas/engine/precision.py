"""Mixed precision (`amp=bf16|fp16|null`): autocast for the forward pass, a GradScaler for fp16.

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (the GradScaler skips a step
whose scaled gradients overflowed and lowers the scale). The weights, optimizer states and the loss
stay fp32; the heatmaps are cast back to fp32 before the loss.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from nas.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None, device: torch.device) -> str | None:
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise UserError(f"amp={amp!r} is not a precision; use bf16, fp16 or null (fp32)")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"amp=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; use amp=fp16 or null")
    return amp


def autocast(amp: str | None, device: torch.device) -> ContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler:
    """Enabled for fp16 only; a disabled scaler's scale/unscale_/step/update are plain passes."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
