"""Channel-aligned structured widths (``round_to``): every block keeps a multiple of K groups.

CPU convolution kernels work on blocks of 16 fp32 channels (AVX-512; 8 with AVX2), so a
slim layer with 5, 9 or 11 channels fills a block only partly and runs at a lower
arithmetic rate than its MAC count suggests (``docs/performance.md``, "Why not").
``round_to=K`` makes structured pruning keep widths the kernels like:

* a **block** is one mask tensor for ``structure="filter"`` / ``"channel"`` (its filters or
  input channels are the groups), and one coupled channel group of
  :mod:`sfpk.deploy.channel_groups` for ``"coupled"`` (its channels are the groups). A bias with a
  mask of its own (``include_bias=True``) is no block: entry ``i`` follows filter ``i`` of
  its layer (:func:`bias_followers`), whose weight it joins; 1-D masks with no filter to
  follow (channel masks) are an error;
* every block keeps a multiple of K of its groups, at least K, or all of them; a block of
  ``G <= K`` groups is never shrunk (it keeps all G: shrinking it would leave it below one
  block of K, which is what the option exists to avoid);
* ``local``: a block keeps ``G - floor(sparsity * G)`` rounded to the nearest count it may
  keep (a multiple of K from K up to G, or G itself; ties keep more);
* ``global``: per block, the groups sorted by score per weight (stable) form **chunks**:
  first the ``G mod K`` lowest (so what stays is a multiple of K), then chunks of K; the
  best K are never a chunk. Chunks of every block are ranked by their mean score per
  weight and removed lowest first within ``floor(sparsity * P)`` weights, skipping one that
  would overshoot (:func:`sfpk.selection.weight_budget.greedy_removal`, the rule of the plain global
  cut). Within a block the chunk scores never decrease and later chunks are never smaller,
  so a block loses its chunks in order, and the total is within one chunk of the budget.

**Reach** (which sparsities a cut can get near, checked before pruning) and the checks of
starting and finished masks are :mod:`sfpk.selection.aligned_checks`'s; the blocks of a mask set and
their counts :mod:`sfpk.selection.aligned_blocks`'s. The particle engine's in-simulation thresholds
ignore ``round_to``; only the final selection (:func:`sfpk.selection.topk.select_topk`) and its
check use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .aligned_blocks import (
    ALIGNED_STRUCTURES,
    AlignedBlock,
    aligned_blocks,
    aligned_keep_count,
    bias_followers,
    block_kept,
    check_round_to,
    entry_groups,
    group_alive,
    is_aligned,
)
from .aligned_checks import (
    check_aligned,
    check_aligned_start,
    check_local_start,
    check_reachable,
    max_sparsity,
)
from .weight_budget import block_starts, greedy_removal

__all__ = [
    "ALIGNED_STRUCTURES",
    "AlignedBlock",
    "aligned_blocks",
    "aligned_global_cut",
    "aligned_keep_count",
    "bias_followers",
    "block_kept",
    "check_aligned",
    "check_aligned_start",
    "check_local_start",
    "check_reachable",
    "check_round_to",
    "entry_groups",
    "group_alive",
    "is_aligned",
    "max_sparsity",
]


def aligned_global_cut(
    values: Tensor, weights: Tensor, sizes: list[int], budget: int, round_to: int
) -> Tensor:
    """Keep vector of the global ``round_to`` cut (module docstring) of groups ``values``.

    Args:
        values: ``[groups]`` scores, blocks of ``sizes`` consecutive groups; higher keeps.
        weights: ``[groups]`` weights each group controls (equal within a block).
        sizes: groups per block.
        budget: how many weights may go.
        round_to: K; a block keeps a multiple of K groups, or all of them.
    """
    per_weight = values / weights
    chunk_of = torch.full((values.numel(),), -1, dtype=torch.long, device=values.device)
    spans: list[tuple[int, int]] = []  # each block's chunk index range
    for start, size in zip(block_starts(sizes), sizes, strict=True):
        removable = size - round_to
        if removable <= 0:
            continue
        order = torch.sort(per_weight[start : start + size], stable=True).indices + start
        first = removable % round_to  # the G mod K lowest go (or stay) together
        position = torch.arange(removable, device=values.device)
        local = torch.div(position - first, round_to, rounding_mode="floor") + int(first > 0)
        begin = spans[-1][1] if spans else 0
        chunk_of[order[:removable]] = local + begin
        spans.append((begin, begin + int(local[-1]) + 1))
    keep = torch.ones_like(values)
    if not spans:
        return keep
    member = chunk_of >= 0
    count = spans[-1][1]
    chunk_weights = torch.zeros(count, dtype=weights.dtype, device=values.device)
    chunk_weights.index_add_(0, chunk_of[member], weights[member])
    sums = torch.zeros(count, dtype=per_weight.dtype, device=values.device)
    sums.index_add_(0, chunk_of[member], per_weight[member])
    means = sums / torch.bincount(chunk_of[member], minlength=count).to(sums.dtype)
    for begin, end in spans:  # non-decreasing within a block, also after float rounding
        means[begin:end] = torch.cummax(means[begin:end], 0).values
    order = torch.sort(means, stable=True).indices
    removed = torch.zeros(count, dtype=torch.bool, device=values.device)
    removed[greedy_removal(order, chunk_weights, budget)] = True
    for begin, end in spans:  # a block loses its chunks in order (module docstring)
        assert not bool((removed[begin + 1 : end] & ~removed[begin : end - 1]).any())
    keep[member & removed[chunk_of.clamp(min=0)]] = 0.0
    return keep
