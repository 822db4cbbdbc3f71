"""Data sets generated or shipped with the core dependencies: MNIST-1D and sklearn digits.

Both are small enough to live in memory as float32 tensors and need no ``data_dir``.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from ..losses import Task
from .base import ArrayDataset, DataSplits, split_train_val
from .registry import register_dataset

__all__ = ["load_mnist1d", "load_digits", "load_digits16"]

_DIGITS_SHAPE = (1, 8, 8)


@functools.lru_cache(maxsize=1)
def _mnist1d_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate MNIST-1D offline with its default arguments (seed 42), once per process.

    ``make_dataset`` reseeds numpy's and Python's global generators; their states are
    restored afterwards so that loading data never changes the caller's random stream.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib)

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return (
        torch.as_tensor(data["x"], dtype=torch.float32),
        torch.as_tensor(data["y"], dtype=torch.int64),
        torch.as_tensor(data["x_test"], dtype=torch.float32),
        torch.as_tensor(data["y_test"], dtype=torch.int64),
    )


@register_dataset("mnist1d", input_shape=(40,), on_disk=False)
def load_mnist1d(*, seed: int = 0, val_fraction: float = 0.1, augment: bool = True) -> DataSplits:
    """MNIST-1D: 4000 training and 1000 test sequences of length 40, 10 classes.

    The generator already centres the data and scales it to unit variance, so no further
    standardisation is applied. ``augment`` is accepted for a uniform signature; there is
    no augmentation for this data set.

    Args:
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the 4000 training sequences held out for validation.
        augment: Ignored.

    Returns:
        The splits, input shape ``(40,)``.
    """
    del augment
    x, y, x_test, y_test = _mnist1d_tensors()
    train_idx, val_idx = split_train_val(len(y), val_fraction, seed)
    return DataSplits(
        name="mnist1d",
        train=ArrayDataset(x[train_idx], y[train_idx]),
        val=ArrayDataset(x[val_idx], y[val_idx]),
        test=ArrayDataset(x_test, y_test),
        num_classes=10,
        input_shape=(x.shape[1],),
    )


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """sklearn's 1797 8x8 digits scaled to [0, 1], with a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=bunch.target, random_state=0
    )
    return x, y, sorted(train_idx.tolist()), sorted(test_idx.tolist())


@register_dataset("digits", input_shape=_DIGITS_SHAPE, on_disk=False)
def load_digits(*, seed: int = 0, val_fraction: float = 0.1, augment: bool = True) -> DataSplits:
    """scikit-learn digits: 1797 grey 8x8 images in [0, 1], 10 classes.

    The test split is a fixed stratified 20 % (``random_state=0``), independent of ``seed``;
    validation is carved from the remaining 80 % with ``seed``. No augmentation.

    Args:
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training part held out for validation.
        augment: Ignored.

    Returns:
        The splits, input shape ``(1, 8, 8)``.
    """
    del augment
    x, y, train_all, test_idx = _digits_tensors()
    return _digits_splits(
        "digits", x, y, train_all, test_idx, seed=seed, val_fraction=val_fraction,
        input_shape=_DIGITS_SHAPE,
    )  # fmt: skip


def _digits_splits(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    train_all: list[int],
    test_idx: list[int],
    *,
    seed: int,
    val_fraction: float,
    input_shape: tuple[int, ...],
    task: Task = "classification",
) -> DataSplits:
    """The train/validation/test splits of the digits images ``x`` (both digits sets)."""
    train_pos, val_pos = split_train_val(len(train_all), val_fraction, seed)
    train_idx = [train_all[i] for i in train_pos]
    val_idx = [train_all[i] for i in val_pos]
    return DataSplits(
        name=name,
        train=ArrayDataset(x[train_idx], y[train_idx]),
        val=ArrayDataset(x[val_idx], y[val_idx]),
        test=ArrayDataset(x[test_idx], y[test_idx]),
        num_classes=10,
        input_shape=input_shape,
        task=task,
    )


_DIGITS16_SHAPE = (1, 16, 16)


@register_dataset("digits16", input_shape=_DIGITS16_SHAPE, on_disk=False, task="denoise")
def load_digits16(*, seed: int = 0, val_fraction: float = 0.1, augment: bool = True) -> DataSplits:
    """scikit-learn digits for denoising: 16×16 grey images in [-1, 1] (``task="denoise"``).

    Each 8×8 digit is upsampled 2× (nearest, every pixel a 2×2 block: a UNet with two
    levels needs even sides) and scaled from [0, 1] to [-1, 1], the range DDPM's noise
    schedule assumes. The splits are those of ``digits``; the labels are kept (the
    denoise loss ignores them).

    Args:
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the training part held out for validation.
        augment: Ignored.

    Returns:
        The splits, input shape ``(1, 16, 16)``, ``task="denoise"``.
    """
    del augment
    x, y, train_all, test_idx = _digits_tensors()
    x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 2 - 1
    return _digits_splits(
        "digits16", x, y, train_all, test_idx, seed=seed, val_fraction=val_fraction,
        input_shape=_DIGITS16_SHAPE, task="denoise",
    )  # fmt: skip
