"""SparseGPT on one weight matrix (Frantar & Alistarh, "SparseGPT: Massive Language Models
Can Be Accurately Pruned in One-Shot", ICML 2023), written from the paper.

The layer-wise problem: given the layer's calibration inputs ``X`` (``H = 2 XᵀX`` for the
squared error, Hessian of ``||WX - ŴX||²`` per output row), find a sparse ``Ŵ`` close to
``W`` in that metric. SparseGPT visits the input columns left to right. Pruning weight
``w_j`` of a row is an Optimal Brain Surgeon step restricted to the columns not yet visited
(eq. 3 of the paper): the error ``ε = w_j / [H_F⁻¹]_jj`` is spread onto the remaining
weights as ``-ε · [H_F⁻¹]_{j,:}``. Because the set ``F`` of remaining columns only shrinks
from the left, every ``H_F⁻¹`` row needed is a row of the upper Cholesky factor ``U`` of
``H⁻¹`` (``H⁻¹ = UᵀU``) scaled by its diagonal, so one Cholesky serves all rows and columns
(Algorithm 1). Updates are applied lazily per block of 128 columns.

Mask selection is adaptive (section 3.3): at the start of each block the block's weights
are ranked by ``w² / [U]_jj²`` (the OBS saliency, with the weights already updated by the
earlier blocks). sfpk's convention is per output row (:mod:`sfpk.llm.select`): each row
drops ``floor(s·i₂) - floor(s·i₁)`` weights in block ``[i₁, i₂)``, which telescopes to
exactly ``floor(s·d_in)`` per row (the paper thresholds a whole block at once). Under
``N:M`` each group of ``M`` columns is ranked when the sweep reaches its first column.

Dampening: ``λ = 1 %`` of the mean diagonal of ``H`` is added to it. Input columns that
never fire (zero diagonal, "dead") get a unit diagonal; their weights act on nothing, so
they are pruned first (saliency -inf) and never move another weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import NonFiniteError
from ..masks import removal_count

__all__ = ["sparsegpt", "inverse_hessian_factor"]

_RETRIES = 4  # each multiplies the dampening by 10 when the Cholesky fails


def _work_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def inverse_hessian_factor(hessian: Tensor, *, damping: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(U, dead)``: the upper Cholesky factor of ``(2H + λI)⁻¹`` and the dead columns.

    Args:
        hessian: ``H = XᵀX / T`` (``[d_in, d_in]``, :meth:`sfpk.llm.stats.InputStats.hessian`).
        damping: ``λ`` as a fraction of the mean diagonal of ``2H``.

    Raises:
        NonFiniteError: ``H`` holds NaN/inf, or stays indefinite after raising ``λ`` 10 000×.
    """
    h = 2.0 * hessian.clone()
    if not torch.isfinite(h).all():
        raise NonFiniteError("the calibration inputs' Gram matrix holds NaN or infinity")
    diagonal = h.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    base = float(diagonal.mean())
    for attempt in range(_RETRIES + 1):
        damped = h.clone()
        damped.diagonal().add_(damping * base * 10.0**attempt)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, dead
    raise NonFiniteError(
        f"the damped Hessian (damping={damping}) is not positive definite even with "
        f"{10**_RETRIES}x the dampening"
    )


def _saliency(block: Tensor, diag: Tensor, prior: Tensor | None) -> Tensor:
    """OBS saliency ``w² / [U]_jj²`` (times ``prior²`` when given)."""
    saliency = block.square() / diag.square()
    return saliency if prior is None else saliency.mul_(prior.square())


def _nm_select(
    block: Tensor,
    diag: Tensor,
    dead: Tensor,
    start: int,
    m: int,
    remove: int,
    prior: Tensor | None,
) -> Tensor:
    """Keep mask of columns ``start : start + m`` of a block by OBS saliency."""
    part = prior[:, start : start + m] if prior is not None else None
    saliency = _saliency(block[:, start : start + m], diag[start : start + m], part)
    saliency.masked_fill_(dead[start : start + m][None, :], -math.inf)
    keep = torch.ones_like(saliency)
    if remove > 0:
        keep.scatter_(1, saliency.sort(dim=1, stable=True).indices[:, :remove], 0.0)
    return keep


@torch.no_grad()
def sparsegpt(
    weight: Tensor,
    hessian: Tensor,
    *,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    mask: Tensor | None = None,
    block_size: int = 128,
    damping: float = 0.01,
    prior: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` with SparseGPT; returns ``(new weight, keep mask)``.

    Args:
        weight: ``[d_out, d_in]`` (an ``nn.Linear`` weight); not modified.
        hessian: ``XᵀX / T`` of the layer's calibration inputs, ``[d_in, d_in]``.
        sparsity: fraction of every row (or N:M group) removed.
        nm: ``(N, M)`` for N:M masks, None for unstructured per-row masks.
        mask: a fixed 0/1 keep mask (then ``sparsity``/``nm`` are ignored): only the OBS
            reconstruction of the kept weights runs (used after SFPK's vote).
        block_size: columns per lazy-update block (rounded up to a multiple of M).
        damping: dampening as a fraction of the mean Hessian diagonal.
        prior: optional ``[d_out, d_in]`` factor on the adaptive selection: weight ``j`` is
            ranked by ``(prior_j · w_j)² / [U]_jj²`` (SFPK's voted mask values, so the
            vote steers SparseGPT's choice, which still sees the updated weights).

    Returns:
        The pruned weight (pruned entries exactly 0, kept ones updated) in ``weight``'s
        dtype, and the float 0/1 keep mask.
    """
    dtype = _work_dtype(weight)
    w = weight.detach().to(dtype).clone()
    rows, cols = w.shape
    upper, dead = inverse_hessian_factor(hessian.to(device=w.device, dtype=dtype), damping=damping)
    keep = mask.to(device=w.device, dtype=dtype).clone() if mask is not None else torch.ones_like(w)
    if prior is not None:
        prior = prior.to(device=w.device, dtype=dtype)
    if nm is not None:
        block_size = nm[1] * math.ceil(block_size / nm[1])
    for lo in range(0, cols, block_size):
        hi = min(lo + block_size, cols)
        block = w[:, lo:hi].clone()
        factor = upper[lo:hi, lo:hi]
        diag = factor.diagonal()
        errors = torch.zeros_like(block)
        part_prior = prior[:, lo:hi] if prior is not None else None
        if mask is None and nm is None:
            remove = removal_count(hi, sparsity) - removal_count(lo, sparsity)
            part = prior[:, lo:hi] if prior is not None else None
            saliency = _saliency(block, diag, part)
            saliency.masked_fill_(dead[lo:hi][None, :], -math.inf)
            if remove > 0:
                order = saliency.sort(dim=1, stable=True).indices[:, :remove]
                keep[:, lo:hi].scatter_(1, order, 0.0)
        for j in range(hi - lo):
            if mask is None and nm is not None and j % nm[1] == 0:
                keep[:, lo + j : lo + j + nm[1]] = _nm_select(
                    block, diag, dead[lo:hi], j, nm[1], removal_count(nm[1], sparsity), part_prior
                )
            column = block[:, j]
            kept = column * keep[:, lo + j]
            error = (column - kept) / diag[j]
            block[:, j:].sub_(error[:, None] * factor[j, j:][None, :])
            block[:, j] = kept  # exact zeros where pruned
            errors[:, j] = error
        w[:, lo:hi] = block
        w[:, hi:].sub_(errors @ upper[lo:hi, hi:])
    return w.to(weight.dtype), keep.to(weight.dtype)
