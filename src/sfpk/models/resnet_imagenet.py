"""ImageNet ResNets (He et al. 2016), written by hand with torchvision's parameter names.

Because names and shapes match ``torchvision.models.resnet*``, a torchvision state dict
loads with :func:`sfpk.models.load_weights`. Stride 2 sits on the 3x3 conv of a bottleneck
("ResNet v1.5"). The pooling is adaptive, so small inputs (e.g. 64x64) work too.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import image_channels, register_model

__all__ = ["Bottleneck", "ImageNetBasicBlock", "ImageNetResNet"]


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ImageNetBasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers and a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN; residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four stages (64/128/256/512 planes), pool, linear.

    Args:
        block: :class:`ImageNetBasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: Output classes.
        in_channels: Input image channels.
    """

    def __init__(
        self,
        block: type[ImageNetBasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        channels, stages = 64, []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for number in range(count):
                stride = 2 if index > 0 and number == 0 else 1
                blocks.append(block(channels, planes, stride))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet18(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ImageNet ResNet-18: 11.7 M parameters with 1000 classes."""
    return ImageNetResNet(
        ImageNetBasicBlock, (2, 2, 2, 2), num_classes, image_channels(input_shape)
    )


@register_model
def resnet34(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ImageNet ResNet-34: 21.8 M parameters with 1000 classes."""
    return ImageNetResNet(
        ImageNetBasicBlock, (3, 4, 6, 3), num_classes, image_channels(input_shape)
    )


@register_model
def resnet50(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ImageNet ResNet-50: 25.6 M parameters with 1000 classes."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, image_channels(input_shape))


@register_model
def resnet101(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """ImageNet ResNet-101: 44.5 M parameters with 1000 classes."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes, image_channels(input_shape))
