"""The CIFAR ResNets of He et al. (2016), registered in timm.

``timm.create_model("resnet110", num_classes=10)`` works after ``import contsup``.
Depth 6n+2: a 3x3 stem (3->16), three stages of n BasicBlocks with widths 16, 32
and 64 (stride 2 and a 1x1 conv + BN projection shortcut where a stage starts),
global average pooling and a linear classifier. Weights are initialised as in
the paper: convolutions normal(0, sqrt(2 / (k * k * out_channels))), batch norm
weight 1 and bias 0.
"""

from __future__ import annotations

import math

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from contsup.errors import ConfigError

__all__ = ["CifarResNet", "BasicBlock", "CIFAR_RESNET_DEPTHS", "paper_init"]

CIFAR_RESNET_DEPTHS = {
    "resnet20": 20,
    "resnet32": 32,
    "resnet44": 44,
    "resnet56": 56,
    "resnet110": 110,
    "resnet1202": 1202,
}
WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


def paper_init(module: nn.Module) -> nn.Module:
    """He et al.'s init, which the reference also gives every aux conv; returns ``module``.

    Example::

        head = paper_init(nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32)))

    Every Conv2d: normal(0, sqrt(2 / (k * k * out_channels))); BatchNorm: weight 1,
    bias 0; Linear keeps PyTorch's default.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, with timm's model interface."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, **kwargs):
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = WIDTHS[-1]
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.act1 = nn.ReLU(inplace=True)
        in_channels = WIDTHS[0]
        self.feature_info = [dict(num_chs=WIDTHS[0], reduction=1, module="act1")]
        for stage, width in enumerate(WIDTHS, start=1):
            stride = 1 if stage == 1 else 2
            blocks = [BasicBlock(in_channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            self.feature_info.append(
                dict(num_chs=width, reduction=2 ** (stage - 1), module=f"layer{stage}")
            )
            in_channels = width
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        paper_init(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg() -> dict:
    return dict(
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        interpolation="bilinear",
        mean=(125.3 / 255, 123.0 / 255, 113.9 / 255),
        std=(63.0 / 255, 62.1 / 255, 66.7 / 255),
        first_conv="conv1",
        classifier="fc",
    )


default_cfgs = generate_default_cfgs({name: _cfg() for name in CIFAR_RESNET_DEPTHS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet,
        variant,
        pretrained,
        depth=CIFAR_RESNET_DEPTHS[variant],
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3)."""
    return _create("resnet20", pretrained, **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5)."""
    return _create("resnet32", pretrained, **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7)."""
    return _create("resnet44", pretrained, **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9)."""
    return _create("resnet56", pretrained, **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18)."""
    return _create("resnet110", pretrained, **kwargs)


@register_model
def resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-1202 for CIFAR (n=200)."""
    return _create("resnet1202", pretrained, **kwargs)
