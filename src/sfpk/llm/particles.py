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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import bounds, check_fields
from ..pruners.particles.dynamics import (
    drift,
    dt_schedule,
    parse_size_functional,
    repulsion,
    size_and_gradient,
)
from .select import keep_mask

__all__ = ["ParticleOptions", "particle_scores", "hessian_sqrt"]

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
    block_size: int = dataclasses.field(default=128, metadata=bounds(ge=1))
    damping: float = dataclasses.field(default=0.01, metadata=bounds(gt=0))

    def __post_init__(self) -> None:
        check_fields(self)


def hessian_sqrt(hessian: Tensor) -> Tensor:
    """The symmetric square root ``F = H^{1/2}`` (negative eigenvalues from round-off -> 0)."""
    values, vectors = torch.linalg.eigh(hessian)
    return (vectors * values.clamp_min(0).sqrt()[None, :]) @ vectors.T


def _polarise(mask: Tensor, abs_weight: Tensor, level: float, nm: tuple[int, int] | None) -> Tensor:
    """``ohh`` at density ``level``: the top ``|m ⊙ W|`` of every row / N:M group -> 1, the
    rest -> 0; the mask itself where nothing would be cut (§2.5)."""
    width = nm[1] if nm is not None else abs_weight.shape[1]
    if int((1.0 - level) * width) < 1:
        return mask
    return keep_mask(mask * abs_weight, 1.0 - level, nm)


@torch.no_grad()
def particle_scores(
    weight: Tensor,
    hessian: Tensor,
    *,
    sparsity: float,
    nm: tuple[int, int] | None,
    options: ParticleOptions,
    generator: torch.Generator,
) -> Tensor:
    """The voted scores ``S`` (``[d_out, d_in]``, higher means keep) of one layer.

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
    abs_w = w.abs()
    factor = hessian_sqrt(hessian.to(device=w.device, dtype=dtype))
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
        for i, level in enumerate(levels.tolist()):
            b = _polarise(particles[i].view(rows, width), abs_w, level, nm)
            delta_w = (1.0 - b) * w
            columns = torch.randperm(width, generator=generator)[:batch].to(w.device)
            sub = factor[:, columns]
            force = ((delta_w @ sub) @ sub.T).mul_(w).mul_(2.0 * scale)  # −∂E_B/∂b
            forces[i] = force.reshape(-1)
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
    return scores.view(rows, width)
