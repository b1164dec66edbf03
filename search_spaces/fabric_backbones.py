"""Backbones for the fabric space: each turns (B, 3, H, W) into four maps at 1/4, 1/8, 1/16, 1/32.

PNFS replaces a fabric's first `cut` layers by a backbone's four feature maps. The backbones here:
- `small`: a CPU-sized stand-in (a stride-4 stem, then three stride-2 conv + BN + ReLU stages), width x 1, 2,
  4, 8 channels; the default so that a search runs in minutes on two cores.
- `mobilenet_v2`: torchvision's MobileNet-V2 `features` up to block 16 (the 320-channel block and the final
  1x1 conv are left out), tapped after blocks 3, 6, 13 and 16: 24, 32, 96, 160 channels (as PNFS).
- `resnet50`: torchvision's ResNet-50 without its classifier, tapped after layer1..layer4: 256..2048
  channels.
- `hrnet_w32`: HRNet-W32 from the stem through stage 3 (this project's `hrnet` space, the last stage-3
  module fusing into every branch, as stage 4 follows it in HRNet), plus transition 3's new branch (a 3x3
  stride-2 conv + BN + ReLU from the 1/16 branch): 32, 64, 128, 256 channels.

Module names follow the published code (torchvision's, pose_hrnet's), so ImageNet checkpoints load by name
with `load_pretrained(path)` (`nas.retrain ... pretrained=FILE`): torchvision's mobilenet_v2 / resnet50
files, HRNet-Image-Classification's hrnet_w32 file. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nas.errors import UserError
from nas.pose.pretrained import load_pretrained
from search_spaces.hrnet import HRNet, _conv_bn

BACKBONES = ("small", "mobilenet_v2", "resnet50", "hrnet_w32")
MOBILENET_TAPS = (3, 6, 13, 16)  # the last block at 1/4, 1/8, 1/16, 1/32
HRNET_W32_STAGE3 = {"stem_width": 64, "stage1": {"blocks": 4, "width": 64},
                    "stages": [{"modules": 1, "blocks": 4, "widths": [32, 64]},
                               {"modules": 4, "blocks": 4, "widths": [32, 64, 128]}]}


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallBackbone(nn.Module):
    """The CPU stand-in: width x 1, 2, 4, 8 channels at 1/4 .. 1/32."""

    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, width, 2), *conv_bn_relu(width, width, 2))
        self.stages = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(width * 2 ** i, width * 2 ** (i + 1), 2)) for i in range(3))
        self.channels = [width * 2 ** i for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        raise UserError("the fabric's small backbone has no published weights; pretrained= applies to "
                        "space_args.backbone mobilenet_v2, resnet50 or hrnet_w32")


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNet-V2 blocks 0..16; maps after blocks 3, 6, 13, 16 (24, 32, 96, 160 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2
        self.features = mobilenet_v2(weights=None).features[:MOBILENET_TAPS[-1] + 1]
        self.channels = [24, 32, 96, 160]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in MOBILENET_TAPS:
                maps.append(x)
        return maps

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """torchvision's ImageNet file (mobilenet_v2-*.pth): its blocks 17, 18 and classifier go unused."""
        return load_pretrained(self, path, what="MobileNet-V2 backbone")


class ResNet50Backbone(nn.Module):
    """torchvision's ResNet-50 without avgpool/fc; maps after layer1..layer4 (256, 512, 1024, 2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50
        net = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.channels = [256, 512, 1024, 2048]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """torchvision's ImageNet file (resnet50-*.pth); its fc goes unused."""
        return load_pretrained(self, path, what="ResNet-50 backbone")


class HRNetW32Backbone(nn.Module):
    """HRNet-W32 stem..stage 3 (+ transition 3's 1/32 branch); maps of 32, 64, 128, 256 channels. The
    attributes are pose_hrnet's (conv1 ... stage3, transition3.3), so HRNet's ImageNet file loads by name."""

    def __init__(self) -> None:
        super().__init__()
        net = HRNet(HRNET_W32_STAGE3, num_keypoints=1, multi_scale_output=True)
        del net.final_layer
        for name, module in net.named_children():
            setattr(self, name, module)
        self.num_stages = net.num_stages
        # transition3 of pose_hrnet: branches 0-2 unchanged (no modules), branch 3 a stride-2 chain from 1/16
        self.transition3 = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity(),
                                          nn.Sequential(_conv_bn(128, 256, 3, 2, relu=True))])
        self.channels = [32, 64, 128, 256]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = list(HRNet.features(self, x))  # the stem, layer1, transition1/stage2, transition2/stage3
        return maps + [self.transition3[3](maps[-1])]

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """HRNet-Image-Classification's file (hrnet_w32-36af842e.pth); stage 4 and its head go unused."""
        return load_pretrained(self, path, what="HRNet-W32 backbone")


def make_backbone(name: str, width: int) -> nn.Module:
    if name == "small":
        return SmallBackbone(width)
    if name == "mobilenet_v2":
        return MobileNetV2Backbone()
    if name == "resnet50":
        return ResNet50Backbone()
    if name == "hrnet_w32":
        return HRNetW32Backbone()
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")


def backbone_channels(name: str, width: int) -> list[int]:
    """The four maps' channels of backbone `name` (without building it)."""
    return {"small": [width * 2 ** i for i in range(4)], "mobilenet_v2": [24, 32, 96, 160],
            "resnet50": [256, 512, 1024, 2048], "hrnet_w32": [32, 64, 128, 256]}[name]
