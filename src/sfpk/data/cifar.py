"""CIFAR-10 and CIFAR-100 from the python-pickle layout on disk (never downloaded).

Expected layout (either ``data_dir`` is the parent folder or the data set folder itself)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch     ("labels")
    cifar-100-python/train, test                                     ("fine_labels")

Images stay in memory as one uint8 tensor ``[N, 3, 32, 32]`` and are transformed per item.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .base import DataSplits, TransformedSubset, resolve_data_dir, split_train_val
from .registry import register_dataset
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
)

__all__ = ["load_cifar10", "load_cifar100", "CIFAR_LAYOUTS"]

_SHAPE = (3, 32, 32)

# name -> (folder, train files, test files, label key, num_classes, mean, std)
CIFAR_LAYOUTS: dict[str, tuple] = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "fine_labels",
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}

# A CIFAR batch holds only dicts, lists, bytes and numpy arrays; refuse anything else so that
# a tampered file cannot run code while being unpickled.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        # The official files were written by numpy 1 ("numpy.core"); numpy 2 renamed it.
        canonical = module.replace("numpy.core.", "numpy._core.", 1)
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        try:
            return super().find_class(canonical, name)
        except (ImportError, AttributeError):  # numpy 1 has no numpy._core
            return super().find_class(module, name)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch into ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    try:
        with open(path, "rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a readable CIFAR pickle batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: missing 'data' or {label_key!r}; keys are {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape} labels")
    return data.reshape(-1, 3, 32, 32), labels


class _CifarArrays(Dataset):
    """Raw uint8 images and labels; ``load(i)`` feeds :class:`TransformedSubset`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


def _read_split(folder: Path, files: list[str], label_key: str, num_classes: int) -> _CifarArrays:
    parts = [_read_batch(folder / name, label_key) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{folder}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes})"
        )
    return _CifarArrays(images, labels)


def _load_cifar(
    name: str, data_dir: str | os.PathLike | None, seed: int, val_fraction: float, augment: bool
) -> DataSplits:
    folder_name, train_files, test_files, label_key, num_classes, mean, std = CIFAR_LAYOUTS[name]
    folder = resolve_data_dir(data_dir, folder_name, train_files + test_files, name=name)
    train_all = _read_split(folder, train_files, label_key, num_classes)
    test = _read_split(folder, test_files, label_key, num_classes)
    normalize = Normalize(mean, std)
    train_transform = (
        Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), normalize])
        if augment
        else normalize
    )
    train_idx, val_idx = split_train_val(len(train_all), val_fraction, seed)
    return DataSplits(
        name=name,
        train=TransformedSubset(train_all, train_idx, train_transform),
        val=TransformedSubset(train_all, val_idx, normalize),
        test=TransformedSubset(test, range(len(test)), normalize),
        num_classes=num_classes,
        input_shape=_SHAPE,
    )


@register_dataset("cifar10", input_shape=_SHAPE, on_disk=True)
def load_cifar10(
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes) from ``cifar-10-batches-py``.

    Training augmentation: random crop 32 with zero padding 4 and horizontal flip; all splits
    are normalised with the CIFAR-10 mean/std of the method spec §5.5.

    Args:
        data_dir: Parent of ``cifar-10-batches-py/`` or that folder; default ``$SFPK_DATA``.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training images held out for validation.
        augment: Apply training augmentation to ``train``.

    Returns:
        The splits, input shape ``(3, 32, 32)``.

    Raises:
        DataError: If the files are missing or malformed.
    """
    return _load_cifar("cifar10", data_dir, seed, val_fraction, augment)


@register_dataset("cifar100", input_shape=_SHAPE, on_disk=True)
def load_cifar100(
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """CIFAR-100 (50,000 train / 10,000 test, 100 fine classes) from ``cifar-100-python``.

    Same transforms as :func:`load_cifar10`, with the CIFAR-100 mean/std.

    Args:
        data_dir: Parent of ``cifar-100-python/`` or that folder; default ``$SFPK_DATA``.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training images held out for validation.
        augment: Apply training augmentation to ``train``.

    Returns:
        The splits, input shape ``(3, 32, 32)``.

    Raises:
        DataError: If the files are missing or malformed.
    """
    return _load_cifar("cifar100", data_dir, seed, val_fraction, augment)
