"""CIFAR ResNets in the OpenLTH layout (method spec §1.1, §5.6).

3x3 stem conv, three stages of basic blocks (first block of stages 2 and 3 has stride 2),
a 1x1 stride-2 conv + BN on each shortcut that changes shape and identity elsewhere, global
average pooling and a linear classifier. Convs have no bias; conv and linear weights are
Kaiming-normal initialised. Depth ``6n + 2`` gives ``n`` blocks per stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .registry import image_channels, init_kaiming_normal, register_model

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with a residual connection, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """OpenLTH-style CIFAR ResNet.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, 1202, ...).
        num_classes: Output classes.
        widths: Channels of the three stages; the stem has ``widths[0]``.
        in_channels: Input image channels.
        conv_classifier: Use a 1x1 conv (with bias) after pooling instead of a linear layer.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        conv_classifier: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth={depth!r} must be 6n + 2 (20, 32, 56, ...)")
        if len(widths) != 3:
            raise ConfigError(f"CIFAR ResNet widths={tuple(widths)!r} must have 3 entries")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = (
            nn.Conv2d(channels, num_classes, 1)
            if conv_classifier
            else nn.Linear(channels, num_classes)
        )
        init_kaiming_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layer3(self.layer2(self.layer1(x))))
        if isinstance(self.fc, nn.Conv2d):
            return self.fc(x).flatten(1)
        return self.fc(x.flatten(1))


@register_model
def resnet_cifar(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    depth: int = 20,
    widths: Sequence[int] = (16, 32, 64),
) -> nn.Module:
    """CIFAR ResNet of any depth ``6n + 2`` and stage widths, e.g. ``depth=1202``."""
    return CifarResNet(depth, num_classes, widths, image_channels(input_shape))


@register_model
def resnet20(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ResNet-20 (16/32/64): 0.27 M parameters; 276,756 prunable with 100 classes."""
    return CifarResNet(20, num_classes, in_channels=image_channels(input_shape))


@register_model
def resnet32(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ResNet-32 as in the reference: widths 32/64/128 and a 1x1-conv classifier."""
    channels = image_channels(input_shape)
    return CifarResNet(32, num_classes, (32, 64, 128), channels, conv_classifier=True)


@register_model
def resnet44(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ResNet-44 (16/32/64)."""
    return CifarResNet(44, num_classes, in_channels=image_channels(input_shape))


@register_model
def resnet56(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ResNet-56 (16/32/64): 0.86 M parameters."""
    return CifarResNet(56, num_classes, in_channels=image_channels(input_shape))


@register_model
def resnet110(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ResNet-110 (16/32/64): 1.7 M parameters."""
    return CifarResNet(110, num_classes, in_channels=image_channels(input_shape))
