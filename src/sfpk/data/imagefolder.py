"""Tiny-ImageNet and ImageNet from image folders on disk, decoded per item with Pillow.

Layouts (``data_dir`` may be the parent folder or the data set folder itself)::

    tiny-imagenet-200/wnids.txt
    tiny-imagenet-200/train/<wnid>/images/*.JPEG
    tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt   (used as the test split)

    imagenet/train/<wnid>/*.JPEG
    imagenet/val/<wnid>/*.JPEG                                       (used as the test split)

Class indices follow the sorted wnids, as torchvision's ``ImageFolder`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from .base import DataSplits, TransformedSubset, resolve_data_dir, split_train_val
from .registry import register_dataset
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    pil_to_tensor,
)

__all__ = ["load_tiny_imagenet", "load_imagenet"]

_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_TINY_SHAPE = (3, 64, 64)
_IMAGENET_SHAPE = (3, 224, 224)


def _require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib, a core dependency; be explicit anyway
        raise DataError("reading image folders needs Pillow: pip install Pillow") from None
    return Image


def _list_images(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.lower().endswith(_IMAGE_SUFFIXES)]
    return [folder / name for name in sorted(names)]


class _ImageFiles(Dataset):
    """``(path, label)`` pairs; ``load(i)`` returns the decoded RGB PIL image and label."""

    def __init__(self, samples: list[tuple[Path, int]]) -> None:
        _require_pil()  # fail early, not in the first batch
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.load(index)

    def load(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            with _require_pil().open(path) as image:
                return image.convert("RGB"), label
        except OSError as err:
            raise DataError(f"{path}: cannot decode image ({err})") from None


def _tiny_samples(folder: Path) -> tuple[list[str], list, list]:
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines()})
    wnids = [w for w in wnids if w]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train = []
    for wnid in wnids:
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise DataError(f"tiny_imagenet: missing {images_dir} (class listed in wnids.txt)")
        train += [(path, index[wnid]) for path in _list_images(images_dir)]
    test = []
    annotations = folder / "val" / "val_annotations.txt"
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations}:{number}: expected '<file>\\t<wnid>...', got {line!r}")
        test.append((folder / "val" / "images" / fields[0], index[fields[1]]))
    if not train or not test:
        raise DataError(f"tiny_imagenet: no images found under {folder}/train or val/images")
    return wnids, train, test


@register_dataset("tiny_imagenet", input_shape=_TINY_SHAPE, on_disk=True)
def load_tiny_imagenet(
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """Tiny-ImageNet (200 classes, 64x64); the official ``val`` folder is the test split.

    Training augmentation: random crop 64 with zero padding 4 and horizontal flip (method
    spec §5.5); all splits are normalised with the ImageNet mean/std.

    Args:
        data_dir: Parent of ``tiny-imagenet-200/`` or that folder; default ``$SFPK_DATA``.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training images held out for validation.
        augment: Apply training augmentation to ``train``.

    Returns:
        The splits, input shape ``(3, 64, 64)``.

    Raises:
        DataError: If the layout is missing or malformed, or Pillow is not installed.
    """
    required = ["wnids.txt", "train", "val/images", "val/val_annotations.txt"]
    folder = resolve_data_dir(data_dir, "tiny-imagenet-200", required, name="tiny_imagenet")
    wnids, train, test = _tiny_samples(folder)
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluate = Compose([pil_to_tensor, normalize])
    if augment:
        augmented = [pil_to_tensor, RandomCrop(64, padding=4), RandomHorizontalFlip(), normalize]
        train_transform = Compose(augmented)
    else:
        train_transform = evaluate
    return _splits(
        "tiny_imagenet", train, test, train_transform, evaluate, num_classes=len(wnids),
        input_shape=_TINY_SHAPE, seed=seed, val_fraction=val_fraction,
    )  # fmt: skip


def _class_folder_samples(split_dir: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    samples = []
    for wnid, label in index.items():
        class_dir = split_dir / wnid
        if class_dir.is_dir():
            samples += [(path, label) for path in _list_images(class_dir)]
    return samples


@register_dataset("imagenet", input_shape=_IMAGENET_SHAPE, on_disk=True)
def load_imagenet(
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """ImageNet in class-folder layout; the official ``val`` folder is the test split.

    Training: random-resized crop 224 (area 0.2-1) and horizontal flip. Evaluation: resize
    the short side to 256, centre crop 224. ImageNet mean/std normalisation. (The
    reference's colour jitter and random greyscale are not applied.)

    Args:
        data_dir: Parent of ``imagenet/`` or the folder holding ``train/`` and ``val/``;
            default ``$SFPK_DATA``.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training images held out for validation.
        augment: Apply training augmentation to ``train``.

    Returns:
        The splits, input shape ``(3, 224, 224)``; ``num_classes`` is the number of class
        folders in ``train/``.

    Raises:
        DataError: If the layout is missing or malformed, or Pillow is not installed.
    """
    folder = resolve_data_dir(data_dir, "imagenet", ["train", "val"], name="imagenet")
    wnids = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    val_classes = (p.name for p in (folder / "val").iterdir() if p.is_dir())
    unknown = sorted(name for name in val_classes if name not in index)
    if unknown:
        raise DataError(f"imagenet: val/ has classes missing from train/: {unknown[:5]}")
    train, test = (_class_folder_samples(folder / s, index) for s in ("train", "val"))
    if not train or not test:
        raise DataError(f"imagenet: expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in {folder}")
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluate = Compose([Resize(256), CenterCrop(224), pil_to_tensor, normalize])
    if augment:
        augmented = [RandomResizedCrop(224, scale=(0.2, 1.0)), pil_to_tensor]
        train_transform = Compose(augmented + [RandomHorizontalFlip(), normalize])
    else:
        train_transform = evaluate
    return _splits(
        "imagenet", train, test, train_transform, evaluate, num_classes=len(wnids),
        input_shape=_IMAGENET_SHAPE, seed=seed, val_fraction=val_fraction,
    )  # fmt: skip


def _splits(
    name: str,
    train: list[tuple[Path, int]],
    test: list[tuple[Path, int]],
    train_transform: Callable,
    evaluate: Callable,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    seed: int,
    val_fraction: float,
) -> DataSplits:
    """The splits of an image-file data set: ``val_fraction`` of ``train`` is held out for
    validation (``evaluate`` transform, like ``test``); the rest gets ``train_transform``."""
    train_all = _ImageFiles(train)
    train_idx, val_idx = split_train_val(len(train_all), val_fraction, seed)
    return DataSplits(
        name=name,
        train=TransformedSubset(train_all, train_idx, train_transform),
        val=TransformedSubset(train_all, val_idx, evaluate),
        test=TransformedSubset(_ImageFiles(test), range(len(test)), evaluate),
        num_classes=num_classes,
        input_shape=input_shape,
    )
