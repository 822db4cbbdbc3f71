"""CIFAR VGG (OpenLTH / SynFlow style): 3x3 conv stack, global average pool, one linear layer.

``vgg11/13/16/19`` have no BatchNorm and biased convs; the ``_bn`` variants put BN after
every conv (convs without bias, since BN's shift replaces it). The pooling is adaptive, so
the same nets run on 64x64 Tiny-ImageNet inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import image_channels, init_kaiming_normal, register_model

__all__ = ["VGG", "VGG_CONFIGS"]

# Channels per conv; "M" is a 2x2 max pool. No pool after the last stage (OpenLTH).
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    """VGG feature stack from ``config``, global average pool and a linear classifier."""

    def __init__(
        self,
        config: Sequence[int | str],
        num_classes: int,
        in_channels: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = int(item)
            layers.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_kaiming_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _vgg(depth: int, batch_norm: bool, num_classes: int, input_shape: tuple | None) -> VGG:
    return VGG(VGG_CONFIGS[depth], num_classes, image_channels(input_shape), batch_norm)


@register_model
def vgg11(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-11 without BatchNorm."""
    return _vgg(11, False, num_classes, input_shape)


@register_model
def vgg11_bn(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-11 with BatchNorm."""
    return _vgg(11, True, num_classes, input_shape)


@register_model
def vgg13(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-13 without BatchNorm."""
    return _vgg(13, False, num_classes, input_shape)


@register_model
def vgg13_bn(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-13 with BatchNorm."""
    return _vgg(13, True, num_classes, input_shape)


@register_model
def vgg16(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-16 without BatchNorm."""
    return _vgg(16, False, num_classes, input_shape)


@register_model
def vgg16_bn(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-16 with BatchNorm."""
    return _vgg(16, True, num_classes, input_shape)


@register_model
def vgg19(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-19 without BatchNorm."""
    return _vgg(19, False, num_classes, input_shape)


@register_model
def vgg19_bn(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """VGG-19 with BatchNorm: about 20.0 M parameters."""
    return _vgg(19, True, num_classes, input_shape)
