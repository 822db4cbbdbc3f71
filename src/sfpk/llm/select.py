"""Keep masks of one weight matrix from scores: per output row, or per N:M group.

The LLM convention (Wanda, SparseGPT's 50 % runs): the comparison group of unstructured
pruning is one **output row** of a linear layer, so every row of ``d_in`` weights loses
exactly ``floor(sparsity * d_in)`` (:func:`sfpk.masks.removal_count`). Under ``N:M`` every
group of ``M`` consecutive weights along a row (the input dimension, as GPUs' 2:4 kernels
want) loses ``floor(sparsity * M)``, so at ``sparsity = 1 - N/M`` it keeps exactly N, as
sfpk's other N:M masks. Ties: the lower column goes first (a stable sort).
"""

from __future__ import annotations

from torch import Tensor

from ..masks.core import removal_count
from ..selection.cuts import nm_cut

__all__ = ["keep_mask"]


def _lowest(scores: Tensor, remove: int) -> Tensor:
    """0/1 keep tensor that drops the ``remove`` lowest of each row of ``scores [G, k]``."""
    keep = scores.new_ones(scores.shape)
    if remove > 0:
        order = scores.sort(dim=1, stable=True).indices[:, :remove]
        keep.scatter_(1, order, 0.0)
    return keep


def keep_mask(scores: Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> Tensor:
    """0/1 keep mask of a ``[d_out, d_in]`` score matrix (higher score means keep).

    Args:
        scores: one score per weight.
        sparsity: fraction removed from every row (or every N:M group).
        nm: ``(N, M)``, or None for unstructured per-row pruning.

    Returns:
        A float mask of ``scores``' shape and dtype.
    """
    if nm is not None:  # groups of M along the input dimension: sfpk's N:M cut
        return nm_cut(scores.reshape(-1), tuple(scores.shape), nm[1], sparsity).reshape(
            scores.shape
        )
    return _lowest(scores, removal_count(scores.shape[1], sparsity))
