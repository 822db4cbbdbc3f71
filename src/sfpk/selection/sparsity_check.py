"""The achieved-sparsity check run after every pruning (:func:`sfpk.prune` and the pipelines).

It re-derives, from the masks alone, what :func:`sfpk.selection.topk.select_topk` promises:
exact counts (unstructured global / local / row, N:M groups, structured local), the
within-one-group total of structured global cuts, whole coupled groups, and for masks with
``round_to`` the aligned widths (:func:`sfpk.selection.aligned.check_aligned`). So a mask file
read back, with its recorded sparsity, scope and ``round_to``, can be checked too.
"""

from __future__ import annotations

import torch

from ..errors import SparsityCheckError
from ..masks.core import Masks, Scope, removal_count
from ..masks.prunable import output_rows, parse_nm
from .aligned import check_aligned, group_alive, is_aligned

__all__ = ["SparsityCheckError", "check_achieved_sparsity"]


def _check_coupled(masks: Masks, sparsity: float, scope: Scope) -> None:
    """Every group is kept or removed whole; per block (local) or overall (global) counts."""
    coupling = masks.coupling
    assert coupling is not None
    alive = group_alive(masks).to(torch.float64)
    if scope == "local":
        for block, keep in zip(coupling.blocks, alive.split(coupling.block_sizes()), strict=True):
            expected = block.groups - removal_count(block.groups, sparsity)
            if int(keep.sum()) != expected:
                raise SparsityCheckError(
                    f"block {block.name!r} keeps {int(keep.sum())} of {block.groups} "
                    f"{block.kind}s, expected {expected} (sparsity {sparsity})"
                )
        return
    weights = coupling.group_weights(masks.shapes)
    total, budget = masks.total_weights(), removal_count(masks.total_weights(), sparsity)
    removed = total - int((weights * alive).sum())
    if not budget - int(weights.max()) < removed <= budget:
        raise SparsityCheckError(
            f"removed {removed} of {total} weights, expected {budget} up to one group of "
            f"{int(weights.max())} (sparsity {sparsity})"
        )


def _check_nm(masks: Masks, m: int, sparsity: float) -> None:
    """Every group of ``m`` along dim 1 keeps exactly ``m - floor(sparsity * m)``."""
    expected = m - removal_count(m, sparsity)
    for name, mask in masks.items():
        kept = (mask != 0).movedim(1, -1).reshape(-1, m).sum(1)
        if bool((kept != expected).any()):
            raise SparsityCheckError(
                f"layer {name!r}: a group of {m} keeps {int(kept.min())}..{int(kept.max())} "
                f"weights, expected {expected} in every group (sparsity {sparsity})"
            )


def check_achieved_sparsity(masks: Masks, sparsity: float, scope: Scope) -> None:
    """Assert the achieved sparsity, global and per layer, matches the selection rules.

    Masks with ``round_to`` > 1 are checked by :func:`sfpk.selection.aligned.check_aligned`:
    every block keeps a multiple of ``round_to`` groups or all, and the counts of ``scope``.

    Raises:
        SparsityCheckError: naming the layer (or the whole set) and both figures.
    """
    if is_aligned(masks.round_to):
        check_aligned(masks, sparsity, scope)
        return
    total = masks.total_weights()
    removed = total - masks.kept_weights()
    nm = parse_nm(masks.structure)
    if masks.coupling is not None:
        _check_coupled(masks, sparsity, scope)
        return
    if nm is not None:
        _check_nm(masks, nm[1], sparsity)
        return
    if masks.structure == "unstructured" and scope == "global":
        expected = removal_count(total, sparsity)
        if removed != expected:
            raise SparsityCheckError(
                f"removed {removed} of {total} weights, expected exactly {expected} "
                f"(sparsity {sparsity})"
            )
        return
    if scope == "global":
        budget = removal_count(total, sparsity)
        largest_group = max(masks.weights_per_entry(n) for n in masks)
        if not budget - largest_group < removed <= budget:
            raise SparsityCheckError(
                f"removed {removed} of {total} weights, expected {budget} up to one group "
                f"of {largest_group} (sparsity {sparsity})"
            )
        return
    for name in masks:
        if scope == "row":
            rows = masks[name].reshape(output_rows(masks[name].shape), -1)
            cols = rows.shape[1]
            kept_rows = torch.count_nonzero(rows, dim=1)
            expected_row = cols - removal_count(cols, sparsity)
            if bool((kept_rows != expected_row).any()):
                raise SparsityCheckError(
                    f"layer {name!r}: a row keeps {int(kept_rows.min())}..."
                    f"{int(kept_rows.max())} of {cols} entries, expected {expected_row} in "
                    f"every row (sparsity {sparsity})"
                )
            continue
        size = masks[name].numel()
        kept = int(torch.count_nonzero(masks[name]))
        expected_kept = size - removal_count(size, sparsity)
        if kept != expected_kept:
            raise SparsityCheckError(
                f"layer {name!r} keeps {kept} of {size} mask entries, expected {expected_kept} "
                f"(sparsity {sparsity})"
            )
