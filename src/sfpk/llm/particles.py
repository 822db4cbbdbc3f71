"""SFPK and SpODE on one linear layer: mask particles driven by the reconstruction energy.

The whole-model method (docs/sfpk-method.md §2-§3) moves ``n`` continuous masks from
density 1 to the target ``ρ`` in ``N`` steps; each step's force is the (straight-through)
gradient of a mini-batch loss at the polarised mask. Layer-wise, the loss of a mask ``m``
of ``W [d_out, d_in]`` is the reconstruction energy of the layer's calibration outputs

    E(m) = ‖WX − (m ⊙ W)X‖²_F = tr(ΔW H ΔWᵀ),   ΔW = (1 − m) ⊙ W,   H = XᵀX,

with the closed-form gradient ``∂E/∂m = −2 W ⊙ (ΔW H)``: one ``[d_out×d_in]·[d_in×d_in]``
product per particle and step, no network pass. Mini-batch noise, the only noise of the
method (§2.9), comes from a factor: with ``F = H^{1/2}`` (``F Fᵀ = H``), a random subset
``B`` of ``k`` columns of ``F`` gives the unbiased estimate
``E_B = (d_in/k) ‖ΔW F_B‖²`` and its gradient ``−2 (d_in/k) W ⊙ (ΔW F_B F_Bᵀ)``, which also
costs less (two ``d_out×d_in×k`` products). Energies are divided by ``E(0) = ‖W F‖²`` so
the force and the repulsion keep the scale they have on a network loss.

Each step, as in §3.1: G and −∇G in closed form (l2), the ``exp`` dt schedule, every
particle polarised at density G (``ohh``: the lowest ``|m ⊙ W|`` of every row, or of every
N:M group, set to 0 and the rest to 1), its force ``e = −∂E_B/∂b`` passed straight through,
the ``|W|``-weighted exp repulsion ``λR`` (SFPK only), the drift ``δ = x e + y g`` with
radius ratio r, ``M ← M + dt·δ``, and the soft vote ``S ← mean_i |m_i ⊙ W| + μ S``. The
pure functions of the dynamics are sfpk's own (:mod:`sfpk.pruners.particles.dynamics`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, bounds, check_fields
from ..pruners.particles.dynamics import (
    drift,
    dt_schedule,
    parse_size_functional,
    repulsion,
    size_and_gradient,
)

__all__ = ["ParticleOptions", "particle_scores", "hessian_sqrt", "energy_forces"]

_L2 = parse_size_functional("l2")


@dataclass(frozen=True)
class ParticleOptions:
    """Settings of layer-wise SFPK (``spode``: one particle, no repulsion).

    Attributes:
        num_particles: n (sfpk only; spode uses 1).
        num_steps: N, steps per layer.
        radius_ratio: r > 1, the drift's step-radius ratio (§2.7).
        repulsion_weight: λ of the exp repulsion (sfpk only; spode uses 0).
        momentum: μ of the score accumulator.
        batch_fraction: fraction of the factor's columns each particle sees per step
            (the mini-batch noise; 1 means the exact energy, hence no noise).
        dt_schedule: ``exp`` (default), ``lin`` or ``invexp`` (§2.3).
        update_weights: after the vote, SparseGPT's OBS update of the kept weights with
            the voted mask fixed.
        selection: ``adaptive`` (default; below SparseGPT at 50 % on both benchmark models,
            where ``vote`` is better on one and worse on the other, docs/llm.md) or ``vote``.
            ``vote``: the final mask is the per-row / N:M top-k of the voted score;
            ``adaptive``: SparseGPT's sweep chooses the mask, ranking weights by
            ``(m̄^γ · w)² / [U]_jj²`` with the voted mask value ``m̄ = S/θ`` and the weights
            as updated so far (it needs ``update_weights=True``).
        prior_power: ``γ`` of the adaptive selection's prior ``m̄^γ`` (0: plain SparseGPT,
            1: the vote's mask values as they are).
        energy: ``plain``: ``E = tr(ΔW H ΔWᵀ)``; ``compensated``: ``H`` congruently rescaled
            to ``K = S H S`` with ``S_jj = 1 / sqrt(H_jj [H⁻¹]_jj)``, so removing one weight
            costs its OBS error after compensation, ``w_j² / [H⁻¹]_jj`` (docs/llm.md).
        rank_by: magnitudes ``θ`` that polarisation, repulsion and the vote use:
            ``metric``: ``|W_ij| · sqrt(K_jj)`` (Wanda's score for the plain energy,
            SparseGPT's for the compensated one); ``weight``: ``|W_ij|`` as in the paper.
        block_size: SparseGPT block size of that update.
        damping: SparseGPT dampening of that update.
    """

    num_particles: int = dataclasses.field(default=10, metadata=bounds(ge=1))
    num_steps: int = dataclasses.field(default=100, metadata=bounds(ge=1))
    radius_ratio: float = dataclasses.field(default=1.4, metadata=bounds(gt=1))
    repulsion_weight: float = dataclasses.field(default=0.2, metadata=bounds(ge=0))
    momentum: float = dataclasses.field(default=0.1, metadata=bounds(ge=0))
    batch_fraction: float = dataclasses.field(default=0.25, metadata=bounds(gt=0, le=1))
    dt_schedule: Literal["exp", "lin", "invexp"] = "exp"
    update_weights: bool = True
    selection: Literal["vote", "adaptive"] = "adaptive"
    prior_power: float = dataclasses.field(default=0.5, metadata=bounds(ge=0))
    energy: Literal["plain", "compensated"] = "compensated"
    rank_by: Literal["metric", "weight"] = "metric"
    block_size: int = dataclasses.field(default=128, metadata=bounds(ge=1))
    damping: float = dataclasses.field(default=0.01, metadata=bounds(gt=0))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.selection == "adaptive" and not self.update_weights:
            raise ConfigError(
                "update_weights=False needs selection='vote' (the adaptive selection chooses "
                "the mask while it updates the weights); choose one of selection='vote' or "
                "update_weights=True"
            )


def hessian_sqrt(hessian: Tensor) -> Tensor:
    """The symmetric square root ``F = H^{1/2}`` (negative eigenvalues from round-off -> 0)."""
    values, vectors = torch.linalg.eigh(hessian)
    return (vectors * values.clamp_min(0).sqrt()[None, :]) @ vectors.T


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest entry along the last dim (keepdim). On CPU numpy's partition is
    about 8x faster than ``kthvalue`` (10 particles of a 512x512 layer: 0.03 s vs 0.26 s)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        part = np.partition(values.numpy(), k - 1, axis=-1)[..., k - 1 : k]
        return torch.from_numpy(np.ascontiguousarray(part))
    return values.kthvalue(k, dim=-1, keepdim=True).values


def _polarise(
    masks: Tensor, abs_weight: Tensor, levels: Tensor, nm: tuple[int, int] | None
) -> Tensor:
    """``ohh`` of every particle at its own density ``G_i`` (§2.5), all at once.

    ``masks`` is ``[n, d_out, d_in]``. Every row (or N:M group) of particle ``i`` with
    ``k_i = floor((1 - G_i)·width) >= 1`` becomes 1 where ``|m ⊙ W|`` reaches its k-th
    smallest value ``τ`` (ties at τ kept, the reference's polarisation rule) and 0 below;
    a particle with ``k_i < 1`` keeps its continuous mask.
    """
    n = masks.shape[0]
    width = nm[1] if nm is not None else masks.shape[2]
    ranked = (masks * abs_weight).reshape(n, -1, width)
    remove = ((1.0 - levels) * width + 1e-9).floor().long().clamp_(0, width)
    if int(remove.max()) < 1:
        return masks
    tau = ranked.new_full((n, ranked.shape[1], 1), -math.inf)
    for k in sorted(set(remove.tolist()) - {0}):  # usually one k for all particles
        chosen = (remove == k).nonzero().reshape(-1).to(masks.device)
        tau[chosen] = _kth_smallest(ranked[chosen], k)
    binary = (ranked >= tau).to(masks.dtype).reshape(masks.shape)
    active = (remove >= 1).to(masks.device)[:, None, None]
    return torch.where(active, binary, masks)


def energy_forces(delta_w: Tensor, weight: Tensor, factor: Tensor, scale: float) -> Tensor:
    """``e = −∂E/∂b = 2·scale·W ⊙ (ΔW F Fᵀ)`` of ``E = scale·‖ΔW F‖²``, ``ΔW = (1 − b) ⊙ W``.

    Batched over particles: ``delta_w [n, d_out, d_in]``, ``factor [n, d_in, k]`` (each
    particle's columns of the factor), ``weight [d_out, d_in]``.
    """
    projected = torch.bmm(delta_w, factor)
    return torch.bmm(projected, factor.transpose(1, 2)).mul_(weight).mul_(2.0 * scale)


def _metric(hessian: Tensor, options: ParticleOptions) -> Tensor:
    """The energy's matrix: ``H`` (plain) or ``K = S H S`` (compensated, see options)."""
    if options.energy == "plain":
        return hessian
    damped = hessian.clone()
    diagonal = damped.diagonal()
    diagonal[diagonal == 0] = 1.0  # dead inputs, as SparseGPT
    diagonal.add_(options.damping * float(diagonal.mean()))
    inverse_diag = torch.cholesky_inverse(torch.linalg.cholesky(damped)).diagonal()
    scale = (diagonal * inverse_diag).clamp_min(1e-30).rsqrt()
    return damped * scale[:, None] * scale[None, :]


@torch.no_grad()
def particle_scores(
    weight: Tensor,
    hessian: Tensor,
    *,
    sparsity: float,
    nm: tuple[int, int] | None,
    options: ParticleOptions,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """The voted scores ``S`` (``[d_out, d_in]``, higher means keep) of one layer, and the
    magnitudes ``θ`` they are measured in (``S = Σ_t μ^(T-t) mean_i |m_i| ⊙ θ``).

    Args:
        weight: ``W [d_out, d_in]``; not modified.
        hessian: ``XᵀX / T`` of the layer's calibration inputs.
        sparsity: the target fraction removed (the particles end at density ``1 - sparsity``).
        nm: ``(N, M)`` or None (polarisation per row / per group, like the final cut).
        options: the method's settings.
        generator: the CPU generator of the mini-batch draws (reproducible by seed).
    """
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype)
    rows, width = w.shape
    metric = _metric(hessian.to(device=w.device, dtype=dtype), options)
    factor = hessian_sqrt(metric)
    abs_w = w.abs()
    if options.rank_by == "metric":
        abs_w = abs_w * metric.diagonal().clamp_min(0).sqrt()[None, :]
    reference = max(float((w @ factor).square().sum()), 1e-30)  # E(0) = ‖W F‖²
    n, steps = options.num_particles, options.num_steps
    batch = max(1, round(options.batch_fraction * width))
    particles = torch.ones((n, rows * width), dtype=dtype, device=w.device)
    forces, work = torch.empty_like(particles), torch.empty_like(particles)
    neg_grads = torch.empty_like(particles)
    scores = torch.zeros(rows * width, dtype=dtype, device=w.device)
    flat_abs = abs_w.reshape(-1)
    density = 1.0 - sparsity
    start = torch.ones(1, dtype=torch.float64)
    end = torch.full((1,), density, dtype=torch.float64)
    radius = torch.full((n,), options.radius_ratio, dtype=torch.float64)
    scale = width / batch / reference
    for step in range(steps):
        levels, _ = size_and_gradient(particles, _L2, total=rows * width, out=neg_grads)
        dt = float(dt_schedule(options.dt_schedule, step, steps, start, end)[0])
        masks = particles.view(n, rows, width)
        delta_w = (1.0 - _polarise(masks, abs_w, levels.cpu().double(), nm)).mul_(w)
        draws = [torch.randperm(width, generator=generator)[:batch] for _ in range(n)]
        sub = factor[:, torch.stack(draws).to(w.device)].permute(1, 0, 2)  # [n, d_in, k]
        forces.copy_(energy_forces(delta_w, w, sub, scale).view(n, -1))
        if n > 1 and options.repulsion_weight > 0:
            push, _ = repulsion(
                particles, mode="exp", sqrt_numerator_weight=flat_abs,
                normalizer_weight=flat_abs, structured=False, out=work,
            )  # fmt: skip
            forces.add_(push, alpha=options.repulsion_weight)
        step_dir, _, _ = drift(forces, neg_grads, radius, scratch=work)
        particles.add_(step_dir, alpha=dt)
        voted = particles.abs().mean(0).mul_(flat_abs)
        scores.mul_(options.momentum).add_(voted)
        if float(levels.mean()) <= density:
            break
    return scores.view(rows, width), abs_w
