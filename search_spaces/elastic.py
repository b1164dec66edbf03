"""Weight-sharing ("elastic") layers for one-shot supernets such as the ViPNAS spaces.

Every elastic layer holds the weights of its largest configuration and runs a smaller one by
taking a part of them, so every sub-network of a supernet runs from the same tensors, without
copies (gradients flow back into the shared weights):

- channels: the first `c` output (and input) channels (OFA-style slicing), so narrower paths
  share the leading channels of wider ones;
- kernel size: the centre `k x k` crop of the `k_max x k_max` kernel (a 3x3 path uses the centre
  of the 7x7 weight);
- groups: the block-diagonal part of the dense shared weight. A conv with `g` groups is the dense
  conv with the connections between different groups removed, so group `j` takes the rows of
  group `j` and, of those, the columns of group `j`. Every group count reuses the same weights,
  and `groups=1` is the dense weight itself. The price: the shared weight is stored dense, even
  when every choice is grouped (a depthwise-only layer stores C x C instead of C x 1 weights).

Each elastic layer has the name-matching plain layer it exports to: `inherit(target)` copies the
part a standalone `nn.Conv2d` / `nn.ConvTranspose2d` / `nn.BatchNorm2d` / `nn.LayerNorm` of the
target's sizes uses, so a standalone network whose modules carry the supernet's module names can
take over its weights (`inherit_weights`). The attention blocks (SE, GC) come in both forms here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

from nas.pose.head import init_head


def centre_crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """(O, I, K, K) -> (O, I, k, k), the centre of the kernel."""
    k_max = weight.shape[-1]
    if kernel > k_max or (k_max - kernel) % 2:
        raise ValueError(f"kernel {kernel} cannot be cut from the centre of a {k_max}x{k_max} kernel")
    start = (k_max - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


def block_diagonal(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """(R, C, ...) dense -> (R, C / groups, ...) grouped weight: row r keeps the columns of its group.

    Rows are a conv's output channels and columns its input channels (for a transposed conv,
    the other way round): row r of group j = r // (R/g) reads columns j*(C/g) ... (j+1)*(C/g)-1.
    """
    rows, cols = dense.shape[:2]
    if rows % groups or cols % groups:
        raise ValueError(f"groups={groups} must divide both {rows} and {cols} channels")
    if groups == 1:
        return dense
    per_row, per_col = rows // groups, cols // groups
    first = (torch.arange(rows, device=dense.device) // per_row) * per_col  # (R,) first column
    index = first[:, None] + torch.arange(per_col, device=dense.device)[None, :]  # (R, C/g)
    index = index.view(rows, per_col, *([1] * (dense.dim() - 2))).expand(rows, per_col, *dense.shape[2:])
    return dense.gather(1, index)


class ElasticConv2d(nn.Conv2d):
    """A conv whose output/input channels, kernel size and groups are chosen per call."""

    def __init__(self, in_max: int, out_max: int, kernel_max: int, stride: int = 1, bias: bool = False):
        super().__init__(in_max, out_max, kernel_max, stride, kernel_max // 2, bias=bias)

    def weight_for(self, c_in: int, c_out: int, kernel: int, groups: int = 1) -> torch.Tensor:
        """The (c_out, c_in / groups, k, k) weight of that configuration, a view of the shared one."""
        return block_diagonal(centre_crop(self.weight[:c_out, :c_in], kernel), groups)

    def forward(self, x: torch.Tensor, c_out: int | None = None, kernel: int | None = None,
                groups: int = 1) -> torch.Tensor:
        c_out, kernel = c_out or self.out_channels, kernel or self.kernel_size[0]
        bias = None if self.bias is None else self.bias[:c_out]
        weight = self.weight_for(x.shape[1], c_out, kernel, groups)
        return F.conv2d(x, weight, bias, self.stride, kernel // 2, 1, groups)

    @torch.no_grad()
    def inherit(self, target: nn.Conv2d) -> None:
        target.weight.copy_(self.weight_for(target.in_channels, target.out_channels,
                                            target.kernel_size[0], target.groups))
        if target.bias is not None:
            target.bias.copy_(self.bias[:target.out_channels])


class ElasticConvTranspose2d(nn.ConvTranspose2d):
    """A stride-2 4x4 transposed conv (x2 upsampling) with elastic channels and groups."""

    def __init__(self, in_max: int, out_max: int):
        super().__init__(in_max, out_max, 4, stride=2, padding=1, bias=False)

    def weight_for(self, c_in: int, c_out: int, groups: int = 1) -> torch.Tensor:
        """(c_in, c_out / groups, 4, 4): here rows are the input channels (PyTorch's layout)."""
        return block_diagonal(self.weight[:c_in, :c_out], groups)

    def forward(self, x: torch.Tensor, c_out: int | None = None, groups: int = 1) -> torch.Tensor:
        weight = self.weight_for(x.shape[1], c_out or self.out_channels, groups)
        return F.conv_transpose2d(x, weight, None, 2, 1, 0, groups)

    @torch.no_grad()
    def inherit(self, target: nn.ConvTranspose2d) -> None:
        target.weight.copy_(self.weight_for(target.in_channels, target.out_channels, target.groups))


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BN over the first C channels of its largest configuration (running stats sliced in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        momentum = self.momentum or 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d (BN recalibration uses it)
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c],
                            self.bias[:c], self.training, momentum, self.eps)

    @torch.no_grad()
    def inherit(self, target: nn.BatchNorm2d) -> None:
        c = target.num_features
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(target, name).copy_(getattr(self, name)[:c])
        target.num_batches_tracked.copy_(self.num_batches_tracked)


class ElasticLayerNorm(nn.LayerNorm):
    """LayerNorm over (C, 1, 1) context vectors (the GC block), C elastic."""

    def __init__(self, c_max: int):
        super().__init__([c_max, 1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.layer_norm(x, (c, 1, 1), self.weight[:c], self.bias[:c], self.eps)

    @torch.no_grad()
    def inherit(self, target: nn.LayerNorm) -> None:
        c = target.normalized_shape[0]
        target.weight.copy_(self.weight[:c])
        target.bias.copy_(self.bias[:c])


ELASTIC = (ElasticConv2d, ElasticConvTranspose2d, ElasticBatchNorm2d, ElasticLayerNorm)


@torch.no_grad()
def inherit_weights(net: nn.Module, supernet: nn.Module) -> nn.Module:
    """Copy into every weighted layer of `net` its part of the same-named elastic supernet layer."""
    for name, module in net.named_modules():
        if not list(module.parameters(recurse=False)) and not list(module.buffers(recurse=False)):
            continue
        source = supernet.get_submodule(name)
        if not isinstance(source, ELASTIC):
            raise TypeError(f"supernet module {name!r} is {type(source).__name__}, not an elastic layer")
        source.inherit(module)
    return net


# ---- attention blocks: squeeze-and-excitation and global context, plain and elastic --------------

def se_channels(channels: int, ratio: int) -> int:
    """Squeeze width of an SE block (MobileNetV3 uses ratio 4)."""
    return max(1, channels // ratio)


def gc_channels(channels: int) -> int:
    """Bottleneck width of a GC block: C/16, but at least 16 (as the searched ViPNAS-Res50 uses)."""
    return max(16, channels // 16)


GATES = {"sigmoid": nn.Sigmoid, "hsigmoid": nn.Hardsigmoid}  # SE scale activations: ResNet's, MobileNetV3's


def squeeze_excite(channels: int, ratio: int = 4, gate: str = "hsigmoid") -> SqueezeExcitation:
    """torchvision's SE block: x * gate(fc2(relu(fc1(avgpool(x))))), fc1/fc2 1x1 convs with bias.

    The squeeze width is C / ratio (`se_channels`), not torchvision's MobileNetV3 rounding to a
    multiple of 8: the shipped S-ViPNAS genotypes reach their published parameter counts with it."""
    return SqueezeExcitation(channels, se_channels(channels, ratio), nn.ReLU, GATES[gate])


class ElasticSqueezeExcite(nn.Module):
    """The elastic form of `squeeze_excite` (same module names fc1/fc2, so it exports)."""

    def __init__(self, c_max: int, ratio: int = 4, gate: str = "hsigmoid"):
        super().__init__()
        self.ratio = ratio
        self.fc1 = ElasticConv2d(c_max, se_channels(c_max, ratio), 1, bias=True)
        self.fc2 = ElasticConv2d(se_channels(c_max, ratio), c_max, 1, bias=True)
        self.activation, self.scale_activation = nn.ReLU(), GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s = self.activation(self.fc1(F.adaptive_avg_pool2d(x, 1), se_channels(c, self.ratio)))
        return x * self.scale_activation(self.fc2(s, c))  # (B, C, H, W) re-weighted channels


def _context(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Attention pooling: x (B, C, H, W), logits (B, 1, H, W) -> (B, C, 1, 1) context."""
    b, c = x.shape[:2]
    weights = torch.softmax(logits.view(b, 1, -1), dim=-1)  # (B, 1, HW)
    return torch.bmm(x.view(b, c, -1), weights.transpose(1, 2)).view(b, c, 1, 1)


def _zero_last(layers: nn.Module) -> None:
    """GCNet starts its transform at zero, so a new GC block is the identity and cannot hurt."""
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)


class GlobalContext(nn.Module):
    """GCNet's block (attention pooling + channel-add transform), ViPNAS's "attention" choice."""

    def __init__(self, channels: int):
        super().__init__()
        mid = gc_channels(channels)
        self.mask = nn.Conv2d(channels, 1, 1)
        self.add = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.LayerNorm([mid, 1, 1]),
                                 nn.ReLU(inplace=True), nn.Conv2d(mid, channels, 1))
        _zero_last(self.add)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.add(_context(x, self.mask(x)))


class ElasticGlobalContext(nn.Module):
    def __init__(self, c_max: int):
        super().__init__()
        mid = gc_channels(c_max)
        self.mask = ElasticConv2d(c_max, 1, 1, bias=True)
        self.add = nn.ModuleList([ElasticConv2d(c_max, mid, 1, bias=True), ElasticLayerNorm(mid),
                                  nn.ReLU(inplace=True), ElasticConv2d(mid, c_max, 1, bias=True)])
        _zero_last(self.add)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        conv1, norm, relu, conv2 = self.add
        h = relu(norm(conv1(_context(x, self.mask(x)), gc_channels(c))))
        return x + conv2(h, c)


class ElasticViPNASHead(nn.Module):
    """The elastic form of `nas.pose.vipnas_head.ViPNASHead` (same module names, so it exports)."""

    def __init__(self, in_max: int, channels_max: int, num_deconv: int, num_keypoints: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_deconv):
            layers += [ElasticConvTranspose2d(in_max if i == 0 else channels_max, channels_max),
                       ElasticBatchNorm2d(channels_max), nn.ReLU(inplace=True)]
        self.deconv = nn.ModuleList(layers)
        self.final = ElasticConv2d(channels_max, num_keypoints, 1, bias=True)
        init_head(self)

    def forward(self, x: torch.Tensor, channels: list[int], groups: list[int]) -> torch.Tensor:
        for i, (c, g) in enumerate(zip(channels, groups)):
            deconv, norm, relu = self.deconv[3 * i: 3 * i + 3]
            x = relu(norm(deconv(x, c, g)))  # (B, c, 2h, 2w)
        return self.final(x)  # (B, K, H/4, W/4) heatmaps


def attention(kind: str, channels: int, elastic: bool, se_ratio: int, se_gate: str) -> nn.Module:
    """The attention block named `kind` ('se' or 'gc'), plain or elastic (channels = its maximum)."""
    if kind == "se":
        return (ElasticSqueezeExcite if elastic else squeeze_excite)(channels, se_ratio, se_gate)
    if kind == "gc":
        return (ElasticGlobalContext if elastic else GlobalContext)(channels)
    raise ValueError(f"unknown attention {kind!r}; known: none, se, gc")


def attention_dict(kinds: Sequence[str], channels: int, elastic: bool, se_gate: str) -> nn.ModuleDict:
    """One attention block per kind other than 'none' (SE squeezes by 4), keyed by kind."""
    return nn.ModuleDict({k: attention(k, channels, elastic, se_ratio=4, se_gate=se_gate)
                          for k in kinds if k != "none"})
