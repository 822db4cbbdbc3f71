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

The indices themselves come as tensors too when the loader uses the standard samplers (a
``BatchSampler`` over a ``RandomSampler`` without replacement or a ``SequentialSampler``):
the random order is drawn as the sampler draws it (the same ``randperm`` calls on the same
generator, at the same batch), and cut into batches, instead of being turned into
``batch_size`` Python ints and back into a tensor for every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate

__all__ = ["SlicingLoader", "batch_taker", "index_batches", "iterate_fast"]

Taker = Callable[[Tensor], list[Tensor]]  # a list, as default_collate gives


def batch_taker(dataset: Any) -> Taker | None:
    """A function ``indices -> batch`` equal to collating ``dataset[i]`` over ``indices``,
    or None when the dataset cannot be sliced as a whole."""
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        return lambda index: [torch.index_select(t, 0, index.to(t.device)) for t in tensors]
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
    for indices in index_batches(loader.batch_sampler):
        batch = take(indices)
        yield [t.pin_memory() for t in batch] if pin else batch


def index_batches(batch_sampler: Any) -> Iterator[Tensor]:
    """The batches of indices ``batch_sampler`` yields, as long tensors.

    A plain ``BatchSampler`` over a ``RandomSampler`` (without replacement) or a
    ``SequentialSampler`` is reproduced with tensors: the same random numbers are drawn
    from the same generator at the same batch, and the same indices come out. Any other
    sampler is iterated and each of its index lists converted.
    """
    if type(batch_sampler) is BatchSampler:
        order = _sample_order(batch_sampler.sampler)
        if order is not None:
            return _cut(order, batch_sampler.batch_size, batch_sampler.drop_last)
    return (torch.as_tensor(indices, dtype=torch.long) for indices in batch_sampler)


def _sample_order(sampler: Any) -> Iterator[Tensor] | None:
    """The sampler's index order as a lazy sequence of tensors, or None if not standard."""
    if type(sampler) is SequentialSampler:
        return iter((torch.arange(len(sampler.data_source)),))
    if type(sampler) is RandomSampler and not sampler.replacement:
        return _random_order(sampler)
    return None


def _random_order(sampler: RandomSampler) -> Iterator[Tensor]:
    """What ``RandomSampler.__iter__`` (no replacement) yields, one permutation at a time.

    The draws match it call for call: without a generator, a seed from torch's global RNG
    when the first index is needed; then ``num_samples // n`` permutations of ``n`` and
    one more cut to ``num_samples % n`` (drawn even when that is 0), each when the
    indices before it have been used up.
    """
    n = len(sampler.data_source)
    generator = sampler.generator
    if generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
    for _ in range(sampler.num_samples // n):
        yield torch.randperm(n, generator=generator)
    yield torch.randperm(n, generator=generator)[: sampler.num_samples % n]


def _cut(order: Iterator[Tensor], size: int, drop_last: bool) -> Iterator[Tensor]:
    """Consecutive batches of ``size`` indices of ``order`` (the last one shorter unless
    ``drop_last``), pulling the next piece of ``order`` only when a batch needs it, as a
    BatchSampler pulls from its sampler."""
    pending: list[Tensor] = []
    have = 0
    for piece in order:
        while piece.numel():
            part, piece = piece[: size - have], piece[size - have :]
            pending.append(part)
            have += part.numel()
            if have == size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, have = [], 0
    if have and not drop_last:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


class SlicingLoader(DataLoader):
    """A DataLoader that batches in-memory data by index slicing (see the module doc)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iterate_fast(self)
