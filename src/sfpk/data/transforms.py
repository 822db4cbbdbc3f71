"""Image transforms written with torch (and PIL for decoded images), no torchvision.

Tensor transforms act on one uint8 image tensor of shape ``[C, H, W]``. Random choices are
drawn from torch's generator, so ``torch.manual_seed`` (or a seeded DataLoader worker) makes
them reproducible. PIL transforms act on ``PIL.Image.Image`` and are used by the folder data
sets before :func:`pil_to_tensor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "RandomResizedCrop",
    "Resize",
    "CenterCrop",
    "pil_to_tensor",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# Method spec §5.5.
CIFAR10_MEAN = (0.491, 0.482, 0.447)
CIFAR10_STD = (0.247, 0.243, 0.262)
CIFAR100_MEAN = (0.507, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _randint(high: int) -> int:
    """A uniform integer in ``[0, high)`` from torch's generator."""
    return int(torch.randint(high, (1,)).item())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x


class RandomCrop:
    """Zero-pad an image tensor by ``padding`` on each side, then crop ``size`` x ``size``.

    Padding happens before normalisation, so padded pixels are black, as in torchvision.
    """

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size, self.padding = size, padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = x.shape
        pad, size = self.padding, self.size
        top = _randint(height + 2 * pad - size + 1) - pad
        left = _randint(width + 2 * pad - size + 1) - pad
        out = x.new_zeros(channels, size, size)
        src_top, src_bottom = max(top, 0), min(top + size, height)
        src_left, src_right = max(left, 0), min(left + size, width)
        out[:, src_top - top : src_bottom - top, src_left - left : src_right - left] = x[
            :, src_top:src_bottom, src_left:src_right
        ]
        return out


class RandomHorizontalFlip:
    """Mirror the last (width) dimension with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() < self.p:
            return x.flip(-1)
        return x


class Normalize:
    """Scale a uint8 image tensor to [0, 1] (floats pass as is), then standardise channels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        return (x - self.mean) / self.std


def pil_to_tensor(image: Any) -> torch.Tensor:
    """Convert a PIL image to a uint8 RGB tensor of shape ``[3, H, W]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


class RandomResizedCrop:
    """Crop a random area/aspect-ratio box of a PIL image and resize it to ``size``.

    Same sampling as torchvision's ``RandomResizedCrop``: up to 10 tries for a box with area
    fraction in ``scale`` and aspect ratio (log-uniform) in ``ratio``, else a central crop.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = torch.exp(torch.empty(1).uniform_(*log_ratio.tolist())).item()
            w = int(round((target * aspect) ** 0.5))
            h = int(round((target / aspect) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                top, left = _randint(height - h + 1), _randint(width - w + 1)
                return left, top, left + w, top + h
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(self, image: Any) -> Any:
        box = self._box(*image.size)
        return image.resize((self.size, self.size), resample=_bilinear(), box=box)


class Resize:
    """Resize a PIL image so that its shorter side equals ``size``, keeping the aspect."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        if width <= height:
            new = (self.size, max(1, int(round(height * self.size / width))))
        else:
            new = (max(1, int(round(width * self.size / height))), self.size)
        return image.resize(new, resample=_bilinear())


class CenterCrop:
    """Crop the central ``size`` x ``size`` box of a PIL image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        left = int(round((width - self.size) / 2.0))
        top = int(round((height - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))
