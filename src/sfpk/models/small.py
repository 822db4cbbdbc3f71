"""Small models for the embedded data sets: ``mlp``, ``cnn1d`` (MNIST-1D), ``cnn_digits``.

They train in seconds on a CPU, which makes them the models of the demo and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .registry import register_model

__all__ = ["MLP", "CNN1d", "CNNDigits", "mlp", "cnn1d", "cnn_digits"]


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU layers of the given widths and a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


class CNN1d(nn.Module):
    """1-D conv net: stride-1 and stride-2 Conv1d-BN-ReLU blocks, then a linear classifier.

    Inputs ``[B, L]`` are read as one channel (``[B, 1, L]``); ``[B, C, L]`` as C channels.
    The classifier sees the flattened feature map (not a global pool) because in MNIST-1D
    the position of a pattern carries information.
    """

    def __init__(
        self, length: int, in_channels: int, num_classes: int, channels: Sequence[int]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, width in enumerate(channels):
            stride = 2 if index % 2 == 1 else 1
            layers += [
                nn.Conv1d(in_channels, width, 5, stride=stride, padding=2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
            length = (length - 1) // stride + 1
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.fc(self.features(x).flatten(1))


class CNNDigits(nn.Module):
    """Small 2-D conv net for 8x8 images: three Conv-BN-ReLU blocks, a pool, a classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@register_model
def mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    hidden: Sequence[int] = (256, 256),
) -> nn.Module:
    """Multi-layer perceptron; input size is the product of ``input_shape`` (default (40,))."""
    shape = input_shape or (40,)
    return MLP(math.prod(shape), num_classes, hidden)


@register_model
def cnn1d(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    channels: Sequence[int] = (32, 64, 64, 64),
) -> nn.Module:
    """1-D conv net for sequences ``(L,)`` or ``(C, L)`` (default MNIST-1D, ``(40,)``)."""
    shape = tuple(input_shape or (40,))
    if len(shape) not in (1, 2):
        raise ConfigError(f"cnn1d needs input_shape (L,) or (C, L), got {shape}")
    in_channels = 1 if len(shape) == 1 else shape[0]
    return CNN1d(shape[-1], in_channels, num_classes, channels)


@register_model
def cnn_digits(
    *, num_classes: int, input_shape: tuple[int, ...] | None = None, width: int = 32
) -> nn.Module:
    """Conv net for small images ``(C, H, W)`` (default sklearn digits, ``(1, 8, 8)``)."""
    shape = tuple(input_shape or (1, 8, 8))
    if len(shape) != 3:
        raise ConfigError(f"cnn_digits needs input_shape (C, H, W), got {shape}")
    return CNNDigits(shape[0], num_classes, width)
