"""Particle scores, voting and score momentum (method spec §2.10).

After each step the particles are ranked by their (pre-update, polarised) energies; the
``⌈vote_ratio·n⌉`` lowest-energy ones (all when that is 0) score their *updated* masks, the
scores are averaged (``soft``) or first cut at the final target (``hard``), and the average
enters the momentum accumulator ``S ← s̄ + μ S``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError
from ...selection.cuts import cut, nm_cut, weighted_cut
from .processors import ThresholdLayout

__all__ = ["VOTES", "SCORES", "rank_voters", "score_weight", "hard_cut", "vote"]

VOTES = ("soft", "hard")
SCORES = ("mp", "m", "mpz")
_MPZ_OFFSET = 1e-4


def rank_voters(energies: Tensor, vote_ratio: float) -> tuple[Tensor, Tensor]:
    """``(order, voters)``: stable ascending energy order and its first ``⌈ratio·n⌉``.

    ``vote_ratio = 0`` selects every particle, like ``1`` (spec §2.10 step 2).
    """
    order = torch.sort(energies, stable=True).indices
    count = math.ceil(vote_ratio * energies.numel())
    return order, order[: count if count > 0 else energies.numel()]


def score_weight(kind: str, abs_theta: Tensor, entry_weight: Tensor | None) -> Tensor | None:
    """Per-entry factor ``w`` with particle score ``s = |m| ⊙ w`` (spec §2.10 step 3).

    ``mp``: ``|θ|`` (structured: ``Σ|θ|`` over the group, i.e. ``Σ|m_c θ|``); ``m``: none;
    ``mpz``: ``|θ| + 1e-4`` (structured: summed over the group).
    """
    if kind == "mp":
        return abs_theta
    if kind == "m":
        return None
    if kind == "mpz":
        offset = entry_weight * _MPZ_OFFSET if entry_weight is not None else _MPZ_OFFSET
        return abs_theta + offset
    raise ConfigError(f"score={kind!r}; choose one of {', '.join(SCORES)}")


def hard_cut(score: Tensor, density: float, layout: ThresholdLayout) -> Tensor:
    """The hard-vote cut at the final target density (spec §2.10 step 4, §9.4).

    Global unstructured as the reference (``k = ⌊(1-ρ)P⌋``, keep ``> τ``, magnitudes kept);
    per layer under local scope; global structured ranks by score per weight and counts
    the removed weights (the reference crashes on the last two); N:M cuts every group.
    """
    removed = 1.0 - density
    if layout.nm_group:  # N:M: each group of M along a tensor's input dimension on its own
        return torch.cat(
            [
                score[lo:hi] * nm_cut(score[lo:hi], shape, layout.nm_group, removed)
                for (lo, hi), shape in zip(layout.segments, layout.shapes, strict=True)
            ]
        )
    if layout.segments is not None:
        return torch.cat(
            [
                score[lo:hi] * cut(score[lo:hi], math.floor(removed * (hi - lo)), ties="drop")
                for lo, hi in layout.segments
            ]
        )
    if layout.entry_weight is None:
        return score * cut(score, math.floor(removed * score.numel()), ties="drop")
    keep = weighted_cut(score, layout.entry_weight, removed * layout.total_weights, ties="drop")
    return score if keep is None else score * keep


def vote(
    particles: Tensor,
    voters: list[int],
    *,
    mode: str,
    weight: Tensor | None,
    density: float,
    layout: ThresholdLayout,
    alive: Tensor | None,
    trace: dict[str, dict[int, Tensor]] | None = None,
) -> Tensor:
    """The voted score ``s̄`` over ``voters`` (accumulated in voter order).

    Args:
        particles: ``[n, P]`` updated particles.
        voters: particle indices, lowest energy first.
        mode: ``soft`` or ``hard``.
        weight: the :func:`score_weight` factor.
        density: the final target density (hard vote).
        layout: per-layer / structured layout for the hard cut.
        alive: ``1[θ ≠ 0]`` per entry for the hard vote, or None.
        trace: if given, receives ``raw`` and ``voted`` scores per voter (clones).
    """
    if mode not in VOTES:
        raise ConfigError(f"vote={mode!r}; choose one of {', '.join(VOTES)}")
    total = torch.zeros_like(particles[0])
    for index in voters:
        score = particles[index].abs()
        if weight is not None:
            score.mul_(weight)
        if trace is not None:
            trace.setdefault("raw", {})[index] = score.clone()
        if mode == "hard":
            if alive is not None:
                score.mul_(alive)
            score = hard_cut(score, density, layout)
        if trace is not None:
            trace.setdefault("voted", {})[index] = score.clone()
        total.add_(score)
    return total.div_(len(voters))
