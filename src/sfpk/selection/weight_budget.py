"""Removing structured pieces within a budget of weights: the greedy rule of global cuts.

A global structured cut counts sparsity in weights, but removes whole pieces (filters,
channels, coupled groups, or the ``round_to`` chunks of :mod:`sfpk.selection.aligned`) of
different sizes. Both the plain cut (:mod:`sfpk.selection.topk`) and the channel-aligned one
remove pieces lowest-ranked first while they fit in ``floor(sparsity * P)`` weights, and
skip a piece that would overshoot, so the total is exact up to one piece.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["block_starts", "greedy_removal"]


def block_starts(sizes: Sequence[int]) -> list[int]:
    """Flat index of the first entry of every block of ``sizes`` consecutive entries."""
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


def greedy_removal(order: Tensor, weights: Tensor, budget: int) -> Tensor:
    """Indices to remove: ``order`` (lowest ranked first) taken while the removed
    ``weights`` fit in ``budget``, skipping pieces that would overshoot it.

    Args:
        order: candidate piece indices, lowest ranked first.
        weights: ``[pieces]`` weights of every piece (indexed by the entries of ``order``).
        budget: how many weights may go.
    """
    if order.numel() == 0:  # nothing may go (e.g. every tensor has a single group)
        return order
    sizes = weights[order]
    prefix = int((torch.cumsum(sizes, 0) <= budget).sum())
    chosen = [order[:prefix]]
    left = budget - int(sizes[:prefix].sum())
    smallest = int(sizes.min())
    extra = []
    for index, size in zip(order[prefix:].tolist(), sizes[prefix:].tolist(), strict=True):
        if left < smallest:
            break
        if size <= left:
            extra.append(index)
            left -= int(size)
    chosen.append(torch.tensor(extra, dtype=order.dtype, device=order.device))
    return torch.cat(chosen)
