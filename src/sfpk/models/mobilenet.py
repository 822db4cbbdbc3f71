"""MobileNet v1 (Howard et al. 2017) for ImageNet-sized inputs.

A 3x3/2 stem and 13 depthwise-separable blocks (3x3 depthwise conv-BN-ReLU, 1x1 pointwise
conv-BN-ReLU), global average pooling and a linear classifier: 4.2 M parameters with 1000
classes. Depthwise convs are plain ``nn.Conv2d`` with ``groups=channels``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .registry import image_channels, register_model

__all__ = ["MobileNetV1"]

# (output channels, stride) of the depthwise-separable blocks.
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
_BLOCKS += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1):
    conv = nn.Conv2d(
        in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False
    )
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class MobileNetV1(nn.Module):
    """MobileNet v1 with width multiplier ``width_mult``."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"width_mult={width_mult!r} must be > 0")

        def scaled(channels: int) -> int:
            return max(8, int(channels * width_mult))

        channels = scaled(32)
        layers = _conv_bn(in_channels, channels, 3, 2)
        for out_channels, stride in _BLOCKS:
            out_channels = scaled(out_channels)
            layers += _conv_bn(channels, channels, 3, stride, groups=channels)
            layers += _conv_bn(channels, out_channels, 1, 1)
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model
def mobilenetv1(
    *, num_classes: int, input_shape: tuple[int, ...] | None = None, width_mult: float = 1.0
) -> nn.Module:
    """MobileNet v1: 4.2 M parameters with 1000 classes at ``width_mult=1``."""
    return MobileNetV1(num_classes, image_channels(input_shape), width_mult)
