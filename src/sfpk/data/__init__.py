"""Data sets with train / val / test splits, and reproducible loaders.

``load_dataset(name)`` returns :class:`DataSplits`: ``train`` (augmented), ``val`` (carved
from the official training split, evaluation transforms) and ``test`` (the official test
split). See :mod:`sfpk.data.base` for the item and seeding conventions. On-disk data sets
are read from ``data_dir`` or ``$SFPK_DATA`` and are never downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import UnknownNameError
from .base import DataSplits, make_loader
from .cifar import load_cifar10, load_cifar100
from .embedded import load_digits, load_mnist1d
from .imagefolder import load_imagenet, load_tiny_imagenet

__all__ = ["DataSplits", "list_datasets", "load_dataset", "make_loader"]

# Builders of the on-disk data sets take data_dir; embedded ones need none.
_ON_DISK: dict[str, Callable[..., DataSplits]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny_imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
}
_EMBEDDED: dict[str, Callable[..., DataSplits]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted({**_ON_DISK, **_EMBEDDED})


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """Load a data set by name as train / val / test splits.

    Args:
        name: One of :func:`list_datasets` (case-insensitive).
        data_dir: Folder of on-disk data sets (the parent of e.g. ``cifar-100-python/``,
            or that folder itself); default ``$SFPK_DATA``. Ignored by ``mnist1d`` and
            ``digits``.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the official training split held out as ``val``, in [0, 1).
        augment: Apply training augmentation to ``train`` (image data sets only).

    Returns:
        The splits with ``num_classes`` and ``input_shape``.

    Raises:
        UnknownNameError: If ``name`` is not a known data set.
        DataError: If an on-disk data set is missing or malformed.
        ConfigError: If ``val_fraction`` is outside [0, 1).

    Example:
        >>> splits = load_dataset("mnist1d", seed=0)
        >>> splits.input_shape, splits.num_classes
        ((40,), 10)
    """
    key = name.lower()
    options = {"seed": seed, "val_fraction": val_fraction, "augment": augment}
    if key in _EMBEDDED:
        return _EMBEDDED[key](**options)
    if key in _ON_DISK:
        return _ON_DISK[key](data_dir=data_dir, **options)
    raise UnknownNameError("data set", name, list_datasets())
