"""In-memory data batched by index slicing instead of sample by sample.

A ``DataLoader`` over tensors in memory fetches each sample with ``dataset[i]`` and stacks
them with ``default_collate``: ``batch_size`` Python calls and a stack per batch. For the
mnist1d MLP that costs as much as the forward+backward pass it feeds. When the data is one
tensor (or two) in memory, one ``tensor[indices]`` per batch does the same work.

:class:`SlicingLoader` is a ``DataLoader`` (every attribute, ``len``, the sampler, the
generator are the DataLoader's) whose iteration slices when it can and gives **the same
batches** as the plain DataLoader with the same generator: it draws the same random numbers
in the same order (the loader's base seed, then the sampler's permutation). It slices when
there are no workers, the collate function is the default one, and the dataset can take a
whole index tensor: a ``TensorDataset``, a dataset with a ``take(indices)`` method (sfpk's
``ArrayDataset`` without a per-item transform, ``TokenBlocks``), or a ``Subset`` of one.
Otherwise it iterates as a plain DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["SlicingLoader", "batch_taker", "iterate_fast"]

Taker = Callable[[Tensor], list[Tensor]]  # a list, as default_collate gives


def batch_taker(dataset: Any) -> Taker | None:
    """A function ``indices -> batch`` equal to collating ``dataset[i]`` over ``indices``,
    or None when the dataset cannot be sliced as a whole."""
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        return lambda index: [t[index] for t in tensors]
    if isinstance(dataset, Subset):
        inner = batch_taker(dataset.dataset)
        if inner is None:
            return None
        indices = torch.as_tensor(dataset.indices, dtype=torch.long)
        return lambda index: inner(indices[index])
    take = getattr(dataset, "take", None)
    if callable(take) and getattr(dataset, "can_take", lambda: True)():
        return take  # type: ignore[no-any-return]
    return None


def _sliceable(loader: DataLoader) -> Taker | None:
    if loader.num_workers != 0 or loader.collate_fn is not default_collate:
        return None
    if loader.batch_sampler is None:  # batch_size=None: unbatched items
        return None
    return batch_taker(loader.dataset)


def iterate_fast(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``: by slicing when it can (same batches), else as it is.

    Like a DataLoader's own iterator, this draws the workers' base seed from the loader's
    generator when the iterator is created (not at its first batch), so code that only
    creates an iterator (``iter(loader) is not loader``) consumes the same random numbers.
    """
    take = _sliceable(loader)
    if take is None:
        return DataLoader.__iter__(loader)
    # What a single-process DataLoader iterator draws first: its workers' base seed.
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return _sliced(loader, take)


def _sliced(loader: DataLoader, take: Taker) -> Iterator[Any]:
    pin = loader.pin_memory and torch.cuda.is_available()
    for indices in loader.batch_sampler:
        batch = take(torch.as_tensor(indices, dtype=torch.long))
        yield [t.pin_memory() for t in batch] if pin else batch


class SlicingLoader(DataLoader):
    """A DataLoader that batches in-memory data by index slicing (see the module doc)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iterate_fast(self)
