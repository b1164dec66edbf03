"""Parameters and FLOPs of a network at a given input size (thop).

"GFLOPs" follows the pose literature (HRNet, ViPNAS, PoseNAS tables): thop's multiply-accumulate
count at batch 1, divided by 1e9.

The published tables do not all count alike. MMPose's counter (MSPN, ViPNAS) is close to thop's. The
HRNet code's `get_model_summary`, behind the HRNet, SimpleBaseline and LPN tables, counts only convs and
linears, each as its weight count x its output pixels, in units of 2**30: a stride-2 transposed conv is
then counted per output pixel (4x its multiply-adds), and BatchNorm not at all. `count_gflops_summary_rule`
reproduces that rule, so a network can be compared with those tables on their own terms.
"""
from __future__ import annotations

import copy
import contextlib
import io

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _transposed_conv_macs(module: nn.ConvTranspose2d, inputs: tuple, output: torch.Tensor) -> None:
    """Each input pixel is spread over a k x k window for every output channel of its group."""
    kh, kw = module.kernel_size
    macs = inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    module.total_ops += torch.DoubleTensor([float(macs)])


def count_gflops(model: nn.Module, input_size: tuple[int, int]) -> float:
    """thop MACs at batch 1 for a (1, 3, H, W) input, in units of 1e9 (on a CPU copy of the model).

    Transposed convs get their own rule: thop 0.1.1 counts them per output pixel, four times too
    many for the stride-2 deconvs of pose heads (ultralytics/thop#92); with the rule, the S-ViPNAS
    networks come out within 1-2% of their published GFLOPs.
    """
    from thop import profile
    probe = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(1, 3, *input_size)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        macs, _ = profile(probe, inputs=(x,), verbose=False,
                          custom_ops={nn.ConvTranspose2d: _transposed_conv_macs})
    return float(macs) / 1e9



def count_gflops_summary_rule(model: nn.Module, input_size: tuple[int, int]) -> float:
    """GFLOPs as the HRNet code's get_model_summary counts them (module doc): sum over conv, transposed
    conv and linear layers of weight count x output pixels, / 2**30, at batch 1 on a CPU copy."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        pixels = output.shape[2] * output.shape[3] if output.dim() == 4 else 1
        total += module.weight.numel() * pixels

    probe = copy.deepcopy(model).cpu().eval()
    handles = [m.register_forward_hook(hook) for m in probe.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        probe(torch.zeros(1, 3, *input_size))
    for handle in handles:
        handle.remove()
    return total / 2 ** 30
