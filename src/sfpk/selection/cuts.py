"""The cuts of one flat vector of scores: which entries (or groups) of it to keep.

Higher score means keep; every cut returns a 0/1 keep vector in the order of its input.
:func:`cut` drops the lowest entries with the exact stable rule of final masks or with the
reference's tie rules (the particle engine's in-simulation thresholds: polarisation, hard
vote); :func:`weighted_cut` is the engine's global structured threshold; :func:`nm_cut`
cuts N:M groups; :func:`structured_global_cut` is the plain global cut of structured
groups. :mod:`sfpk.selection.topk` turns scores of a mask set into masks with them.

**Weight budgets.** A global structured cut counts sparsity in weights, but removes whole pieces
(filters, channels, coupled groups, or the ``round_to`` chunks of :mod:`sfpk.selection.aligned`)
of different sizes. Both the plain cut (:func:`structured_global_cut`) and the channel-aligned
one remove pieces lowest-ranked first while they fit in ``floor(sparsity * P)`` weights, and
skip a piece that would overshoot (:func:`greedy_removal`), so the total is exact up to one
piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..masks.core import removal_count
from .kth_select import kth_smallest, select_kth

__all__ = [
    "Ties",
    "cut",
    "nm_cut",
    "structured_global_cut",
    "weighted_cut",
    "block_starts",
    "greedy_removal",
]

Ties = Literal["stable", "drop", "keep"]


def cut(values: Tensor, remove: int, *, ties: Ties = "stable") -> Tensor:
    """0/1 keep vector (``values``' dtype) that drops the ``remove`` lowest entries.

    Args:
        values: flat scores; higher means keep.
        remove: how many entries to drop; below 1 nothing is dropped.
        ties: what happens to the entries equal to the cut value ``τ`` (the ``remove``-th
            smallest): ``"stable"`` drops exactly ``remove`` entries, the ties at ``τ`` in
            index order (what a stable sort removes; used for every final mask);
            ``"drop"`` drops every entry ``≤ τ`` and ``"keep"`` only those ``< τ`` (the
            reference's hard-vote and polarisation thresholds, method spec §2.5, §2.10).
    """
    if remove < 1:
        return torch.ones_like(values)
    if ties == "stable" and remove >= values.numel():
        return torch.zeros_like(values)
    if ties not in ("stable", "drop", "keep"):
        raise ConfigError(f"ties={ties!r}; choose one of stable, drop, keep")
    if _on_numpy(values):
        # numpy's comparisons, counts and casts are several times faster than torch's on
        # one CPU thread (the engine thresholds every particle at every step); same result.
        return torch.from_numpy(_cut_numpy(values.detach().numpy(), remove, ties))
    tau = kth_smallest(values, remove)
    if ties == "drop":
        return (values > tau).to(values.dtype)
    if ties == "keep":
        return (values >= tau).to(values.dtype)
    keep = torch.ones_like(values)
    below = values < tau
    keep[below] = 0.0
    at = torch.nonzero(values == tau).reshape(-1)
    keep[at[: remove - int(below.sum())]] = 0.0
    return keep


def _cut_numpy(array: np.ndarray, remove: int, ties: Ties) -> np.ndarray:
    """:func:`cut` of a flat float array (``1 <= remove``, and ``< size`` when stable)."""
    tau = select_kth(array, remove)
    if ties == "drop":
        return (array > tau).astype(array.dtype)
    if ties == "keep":
        return (array >= tau).astype(array.dtype)
    below = array < tau
    keep = np.logical_not(below).astype(array.dtype)
    at = np.flatnonzero(array == tau)  # ascending: the lowest indices go first
    keep[at[: remove - int(np.count_nonzero(below))]] = 0.0
    return keep


def _on_numpy(values: Tensor) -> bool:
    """Whether ``values`` is a flat CPU float tensor numpy can read in place."""
    return (
        values.device.type == "cpu"
        and values.dtype in (torch.float32, torch.float64)
        and values.dim() == 1
    )


def _per_weight_prefix(
    values: Tensor, weights: Tensor, budget: float
) -> tuple[Tensor, Tensor, int]:
    """``(per_weight, order, k)``: score per weight, its stable ascending order, and how many
    of the lowest groups fit in ``budget`` removed weights (the greedy prefix)."""
    per_weight = values / weights
    order = torch.sort(per_weight, stable=True).indices
    k = int((torch.cumsum(weights[order], 0) <= budget).sum())
    return per_weight, order, k


def weighted_cut(
    values: Tensor, weights: Tensor, budget: float, *, ties: Ties = "keep"
) -> Tensor | None:
    """The global structured threshold: groups ranked by score per weight, counted in weights.

    A group's score sums over the weights it controls, so raw sums would favour removing
    small groups. The lowest groups whose weights fit in ``budget`` set the threshold ``τ``;
    ``ties`` is ``"drop"`` (keep ``> τ``) or ``"keep"`` (keep ``≥ τ``), as in :func:`cut`.

    Returns:
        A 0/1 keep vector, or None when not even one group fits in the budget.
    """
    per_weight, order, k = _per_weight_prefix(values, weights, budget)
    if k < 1:
        return None
    tau = per_weight[order[k - 1]]
    if ties == "drop":
        return (per_weight > tau).to(values.dtype)
    if ties == "keep":
        return (per_weight >= tau).to(values.dtype)
    raise ConfigError(f"ties={ties!r}; weighted_cut takes drop or keep")


def nm_cut(values: Tensor, shape: tuple[int, ...], m: int, sparsity: float) -> Tensor:
    """0/1 keep vector (flat, ``values``' order) for an N:M pattern at ``sparsity``.

    ``values`` is one tensor of ``shape`` flattened; groups are ``m`` consecutive entries
    along dim 1 (the input dimension) at every other index, and each group drops its
    ``floor(sparsity * m)`` lowest entries (lower position in the group first on ties). At
    the N:M target ``sparsity = 1 - N/M`` every group keeps exactly N.
    """
    remove = removal_count(m, sparsity)
    moved = values.reshape(shape).movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = torch.ones_like(groups)
    if remove > 0:
        order = torch.sort(groups, dim=1, stable=True).indices[:, :remove]
        keep.scatter_(1, order, 0.0)
    return keep.reshape(moved.shape).movedim(-1, 1).reshape(-1)


def structured_global_cut(values: Tensor, weights: Tensor, sizes: list[int], budget: int) -> Tensor:
    """Keep vector of the global structured cut: groups ranked by score per weight, removed
    lowest first within ``budget`` weights, the best group of every block always kept (so
    no layer is cut off entirely)."""
    per_weight, order, _ = _per_weight_prefix(values, weights, budget)
    best = torch.stack(
        [
            chunk.argmax() + start
            for chunk, start in zip(per_weight.split(sizes), block_starts(sizes), strict=True)
        ]
    )
    order = order[~torch.isin(order, best)]
    keep = torch.ones_like(values)
    keep[greedy_removal(order, weights, budget)] = 0.0
    return keep


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
