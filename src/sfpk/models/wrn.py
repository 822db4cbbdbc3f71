"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR-sized inputs.

Pre-activation blocks (BN-ReLU-conv), depth ``6n + 4`` with ``n`` blocks per stage and
stage widths ``16k / 32k / 64k`` for widening factor ``k``; 1x1 convs on the shortcuts that
change shape. ``wrn28x2`` is WRN-28-2 (1.47 M parameters with 10 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .registry import image_channels, register_model

__all__ = ["WideBlock", "WideResNet"]


class WideBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the two convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        # A projecting shortcut takes the pre-activated input, as in the authors' code.
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-width.

    Args:
        depth: ``6n + 4`` (16, 22, 28, 40, ...).
        width: Widening factor ``k``.
        num_classes: Output classes.
        in_channels: Input image channels.
        dropout: Dropout probability inside the blocks.
    """

    def __init__(
        self, depth: int, width: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"WRN depth={depth!r} must be 6n + 4 (16, 22, 28, 40, ...)")
        if width < 1:
            raise ConfigError(f"WRN width={width!r} must be >= 1")
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages, channels = [], 16
        for index, stage_width in enumerate((16 * width, 32 * width, 64 * width)):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(WideBlock(channels, stage_width, stride, dropout))
                channels = stage_width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))


@register_model
def wrn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    depth: int = 28,
    width: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """Wide ResNet of any ``depth`` (6n + 4) and widening factor ``width``."""
    return WideResNet(depth, width, num_classes, image_channels(input_shape), dropout)


@register_model
def wrn28x2(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """WRN-28-2: 1.47 M parameters."""
    return WideResNet(28, 2, num_classes, image_channels(input_shape))


@register_model
def wrn28x4(*, num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """WRN-28-4: 5.9 M parameters."""
    return WideResNet(28, 4, num_classes, image_channels(input_shape))
