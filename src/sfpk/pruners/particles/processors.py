"""Mask processors: the polarisation of a particle inside the energy (method spec §2.4, §2.5).

A processor maps a continuous particle ``m`` (one flat row) to the mask ``p`` the forward pass
uses (``w_eff = θ ⊙ p``, broadcast for structured masks) and says how the energy gradient
with respect to ``p`` becomes the gradient with respect to ``m``. All of them rank entries by
``c = |m ⊙ θ|`` (structured: ``|m|·Σ|θ|`` over the group; ``rank_by_weight=False``: ``|m|``).

Thresholds (``ohh`` family) follow the reference: ``k = ⌊(1 - G)·P_m⌋``, ``τ`` the k-th
smallest ``c``, keep ``c ≥ τ`` (so ``P_m - k + 1`` are kept, ties aside); no thresholding when
``k < 1``. Where nothing is thresholded every processor is the identity (``p = m``, gradient
passed through).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from ...errors import ConfigError
from ...selection.cuts import cut, weighted_cut

__all__ = ["PROCESSORS", "ThresholdLayout", "binarize", "process", "quantile"]

PROCESSORS = ("ohh", "ohhm", "oh", "ohm", "qt", "qtm", "gau", "gaum")
GradFn = Callable[[Tensor], Tensor] | None
_MIN_SPREAD = 1e-12  # smallest q_hi - q_lo of the qt/gau sigmoid


@dataclass(frozen=True)
class ThresholdLayout:
    """Where thresholds apply.

    Attributes:
        segments: per-layer ``(start, stop)`` slices of the flat vector when thresholds are
            per layer (local scope), else None (one global threshold).
        entry_weight: weights per mask entry for a *global structured* threshold (entries
            are ranked by ``c / s`` and the removed count is measured in weights), else None.
        total_weights: ``P`` (weights), used with ``entry_weight``.
        skip_at_one: reference behaviour under local scope: a layer with ``k_l ≤ 1`` (not only
            ``k_l < 1``) keeps its continuous mask (golden README, note 1).
        nm_group: ``M`` of an N:M mask set (0 otherwise): the hard vote cuts every group of
            ``M`` along each tensor's input dimension (``shapes``) instead of one threshold.
        shapes: the mask shape of each segment (N:M only).
    """

    segments: tuple[tuple[int, int], ...] | None = None
    entry_weight: Tensor | None = None
    total_weights: int = 0
    skip_at_one: bool = False
    nm_group: int = 0
    shapes: tuple[tuple[int, ...], ...] = ()


def binarize(
    rank: Tensor, density: float | Sequence[float], layout: ThresholdLayout
) -> tuple[Tensor | None, Tensor | None]:
    """Hard 0/1 polarisation of one particle at ``density`` (≈ G).

    Args:
        rank: ``[P_m]`` ranking values ``c``.
        density: the kept fraction, one value or one per layer (local scope).
        layout: where the thresholds apply.

    Returns:
        ``(keep, active)``: ``keep`` is None when nothing is thresholded; otherwise a 0/1
        vector that is 1 outside thresholded layers. ``active`` is None when every entry was
        thresholded, else a bool vector marking the thresholded layers' entries.
    """
    if layout.segments is None:
        d = float(density if not isinstance(density, Sequence) else density[0])
        if layout.entry_weight is not None:
            budget = (1.0 - d) * layout.total_weights
            return weighted_cut(rank, layout.entry_weight, budget, ties="keep"), None
        k = math.floor((1.0 - d) * rank.numel())
        return (cut(rank, k, ties="keep"), None) if k >= 1 else (None, None)
    keep = torch.ones_like(rank)
    active = torch.zeros(rank.shape, dtype=torch.bool, device=rank.device)
    floor = 2 if layout.skip_at_one else 1
    any_done = False
    for index, (lo, hi) in enumerate(layout.segments):
        d = float(density[index] if isinstance(density, Sequence) else density)
        k = math.floor((1.0 - d) * (hi - lo))
        if k >= floor:
            keep[lo:hi] = cut(rank[lo:hi], k, ties="keep")
            active[lo:hi] = True
            any_done = True
    if not any_done:
        return None, None
    return keep, (None if bool(active.all()) else active)


def quantile(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) via a sort: differentiable and
    without torch.quantile's ~16M-element limit (spec §8.11)."""
    ordered = torch.sort(values).values
    pos = min(max(q, 0.0), 1.0) * (values.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, values.numel() - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def _sigmoid_mask(
    rank: Tensor, density: float, kind: str, eps: float, ratio: float
) -> Tensor | None:
    """The qt / gau soft polarisation of one block (None: nothing to threshold)."""
    removed = 1.0 - density
    if math.floor(removed * rank.numel()) < 1:
        return None
    if kind == "qt":
        q_hi, q_lo = quantile(rank, removed), quantile(rank, removed * ratio)
    else:
        mean, std = rank.mean(), rank.std()
        inv = NormalDist().inv_cdf
        q_hi = mean + inv(removed) * std
        q_lo = mean + inv(max(removed * ratio, 1e-12)) * std
    upper, lower = math.log(eps / (1.0 - eps)), math.log((1.0 - eps) / eps)
    # Tied quantiles (e.g. many zeros of an earlier round's mask) would divide 0 by 0.
    spread = (q_hi - q_lo).clamp_min(_MIN_SPREAD)
    return torch.sigmoid(lower + (rank - q_lo) / spread * (upper - lower))


def _soft(
    mask: Tensor,
    rank_fn: Callable[[Tensor], Tensor],
    density: float | Sequence[float],
    layout: ThresholdLayout,
    kind: str,
    eps: float,
    ratio: float,
) -> tuple[Tensor, Tensor]:
    """``(value, leaf)`` of qt/gau with autograd through the sigmoid, c and the quantiles."""
    leaf = mask.detach().requires_grad_(True)
    with torch.enable_grad():
        rank = rank_fn(leaf)
        blocks = layout.segments or ((0, rank.numel()),)
        pieces = []
        for index, (lo, hi) in enumerate(blocks):
            d = float(density[index] if isinstance(density, Sequence) else density)
            soft = _sigmoid_mask(rank[lo:hi], d, kind, eps, ratio)
            pieces.append(leaf[lo:hi] if soft is None else soft)
        value = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return value, leaf


def process(
    kind: str,
    mask: Tensor,
    rank_weight: Tensor | None,
    density: float | Sequence[float],
    layout: ThresholdLayout,
    *,
    eps: float = 0.9,
    ratio: float = 0.9,
) -> tuple[Tensor, GradFn]:
    """Polarise one particle with processor ``kind`` (spec §2.5 table).

    Args:
        kind: one of :data:`PROCESSORS`.
        mask: ``[P_m]`` continuous particle.
        rank_weight: ``a`` in ``c = |m|·a`` (``|θ|``, or ``Σ|θ|`` per group), None for ``|m|``.
        density: G of the particle (global) or per-layer values.
        layout: threshold layout.
        eps, ratio: qt/gau sigmoid calibration.

    Returns:
        ``(p, grad_fn)``: the mask used in the forward and a function mapping
        ``u = ∂E/∂p`` (mask-shaped, flat) to ``∂E/∂m``; None means ``∂E/∂m = u``
        (straight-through / identity).
    """

    def rank_of(m: Tensor) -> Tensor:
        return m.abs() * rank_weight if rank_weight is not None else m.abs()

    if kind in ("qt", "qtm", "gau", "gaum"):
        base = kind[:-1] if kind.endswith("m") else kind
        value, leaf = _soft(mask, rank_of, density, layout, base, eps, ratio)
        if kind.endswith("m"):
            soft = value.detach()
            return soft * mask, lambda u: u * soft
        return value.detach(), lambda u: torch.autograd.grad(value, leaf, u)[0]
    if kind not in PROCESSORS:
        raise ConfigError(f"processor={kind!r}; choose one of {', '.join(PROCESSORS)}")
    keep, active = binarize(rank_of(mask), density, layout)
    if keep is None:
        return mask, None
    if kind == "ohh":
        return (keep if active is None else torch.where(active, keep, mask)), None
    if kind == "ohhm":
        return mask * keep, None
    if kind == "ohm":
        return mask * keep, lambda u: u * keep
    # "oh": b ⊙ m / stopgrad(m): forward b, gradient b/m (dropped entries get 0).
    value = keep if active is None else torch.where(active, keep, mask)
    safe = torch.where(mask != 0, mask, torch.ones_like(mask))
    scale = torch.where(mask != 0, keep / safe, torch.zeros_like(mask))
    if active is not None:
        scale = torch.where(active, scale, torch.ones_like(scale))
    return value, lambda u: u * scale
