"""Shared pieces of the data layer: the split container, datasets over arrays, loaders.

Conventions used by every data set in :mod:`sfpk.data`:

* an item is ``(x, y)``: for classification data sets (``task="classification"``) ``x`` is
  a float32 tensor and ``y`` an int64 scalar tensor; for language-model data sets
  (``task="language_model"``, :mod:`sfpk.data.text`) both are int64 token ids ``[T]``,
  ``y`` being ``x`` shifted by one token;
* ``train`` and ``val`` are disjoint parts of the official training split (``val`` uses the
  evaluation transform and serves model selection); ``test`` is the official test split,
  untouched;
* augmentation draws from torch's random number generator, so a seeded run
  (``torch.manual_seed`` in the main process, the loader's seeded generator in workers) is
  reproducible.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError, DataError
from ..index_batches import SlicingLoader
from ..losses import Task

__all__ = [
    "DataSplits",
    "ArrayDataset",
    "TransformedSubset",
    "make_loader",
    "split_train_val",
    "resolve_data_dir",
]

Transform = Callable[[torch.Tensor], torch.Tensor]
DATA_ENV_VAR = "SFPK_DATA"


@dataclass(frozen=True)
class DataSplits:
    """The three splits of one data set and what a model needs to know about them.

    Attributes:
        name: Registry name of the data set, e.g. ``"cifar100"``.
        train: Training part of the official train split, with augmentation if requested.
        val: Held-out part of the official train split, with evaluation transforms; used for
            model selection.
        test: The official test split, with evaluation transforms.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``. For a
            language-model data set, the vocabulary size (targets are token ids).
        input_shape: Shape of one input sample, e.g. ``(40,)`` or ``(3, 32, 32)``; for a
            language-model data set ``(block_size,)``.
        task: ``"classification"`` or ``"language_model"``: which loss and metrics apply
            (:mod:`sfpk.losses`).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    task: Task = "classification"

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size of a language-model data set (``num_classes``); else None."""
        return self.num_classes if self.task == "language_model" else None


class ArrayDataset(Dataset):
    """Items ``(transform(inputs[i]), labels[i])`` over in-memory tensors.

    Args:
        inputs: Tensor of samples, first dimension indexes items. Any dtype; the transform
            (or, without one, a cast) turns an item into float32.
        labels: Integer labels, one per sample.
        transform: Per-item callable applied to ``inputs[i]``.
    """

    def __init__(
        self, inputs: torch.Tensor, labels: torch.Tensor, transform: Transform | None = None
    ) -> None:
        if len(inputs) != len(labels):
            raise DataError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs = inputs
        self.labels = labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        x = self.transform(x) if self.transform is not None else x.to(torch.float32)
        return x, self.labels[index]

    def can_take(self) -> bool:
        """Whether :meth:`take` applies: only without a per-item transform."""
        return self.transform is None

    def take(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The collated batch of items ``index``, by one slice (``sfpk.index_batches``)."""
        return [self.inputs[index].to(torch.float32), self.labels[index]]


class TransformedSubset(Dataset):
    """A subset of a base dataset whose items are loaded with a split-specific transform.

    The base dataset must offer ``load(index) -> (raw, label)``; ``raw`` is whatever the
    transform expects (a uint8 tensor, a PIL image, ...). This lets ``train`` and ``val``
    share one copy of the data while using different transforms.

    Args:
        base: Dataset with a ``load`` method.
        indices: Indices into ``base``.
        transform: Callable from the raw item to a float32 tensor.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable) -> None:
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw, label = self.base.load(self.indices[index])
        return self.transform(raw), torch.tensor(label, dtype=torch.int64)


def split_train_val(num_items: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(num_items)`` into seeded, disjoint train and validation index lists.

    Args:
        num_items: Size of the official training split.
        val_fraction: Fraction of it held out for validation, in [0, 1).
        seed: Seed of the permutation; the same seed gives the same split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        ConfigError: If ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must be in [0, 1)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_items, generator=generator).tolist()
    num_val = int(round(num_items * val_fraction))
    return sorted(order[num_val:]), sorted(order[:num_val])


def resolve_data_dir(
    data_dir: str | os.PathLike | None, folder: str, required: Sequence[str], *, name: str
) -> Path:
    """Find a data set folder given either its parent or the folder itself.

    Args:
        data_dir: User-given directory; ``None`` falls back to the ``SFPK_DATA`` variable.
        folder: Conventional folder name of the data set, e.g. ``"cifar-10-batches-py"``.
        required: Relative paths that must exist inside the folder.
        name: Data set name, for messages.

    Returns:
        The data set folder.

    Raises:
        DataError: If no directory is given or the expected files are missing. Nothing is
            ever downloaded.
    """
    expected = ", ".join(required)
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR)
    if not data_dir:
        raise DataError(
            f"{name}: no data directory given; pass data_dir or set {DATA_ENV_VAR} to a folder "
            f"containing {folder}/ (with {expected}). sfpk never downloads data."
        )
    root = Path(data_dir).expanduser()
    for candidate in (root / folder, root):
        if all((candidate / item).exists() for item in required):
            return candidate
    missing = [item for item in required if not (root / folder / item).exists()]
    raise DataError(
        f"{name}: expected {expected} in {root / folder} (or in {root} itself); missing: "
        f"{', '.join(missing)}. sfpk never downloads data; place the files there."
    )


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random from it so
    # user transforms that use them are reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Build a reproducible DataLoader.

    The shuffling order and the workers' random seeds come from a generator seeded with
    ``seed``. Memory is pinned when CUDA is available; workers persist across epochs.
    In-memory data sets are batched by index slicing, with the same batches
    (:class:`sfpk.index_batches.SlicingLoader`).

    Args:
        dataset: Any map-style dataset.
        batch_size: Items per batch.
        shuffle: Reshuffle every epoch.
        seed: Seed of the loader's generator.
        num_workers: Worker processes; 0 loads in the main process.
        drop_last: Drop the last incomplete batch.
        sampler: the order of the items instead of ``shuffle`` (e.g. a
            ``DistributedSampler`` giving this rank its share).

    Returns:
        The DataLoader.

    Example:
        >>> splits = load_dataset("digits")
        >>> loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=1)
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be >= 1")
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r} must be >= 0")
    return SlicingLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
