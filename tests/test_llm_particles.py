"""Layer-wise SFPK / SpODE internals (sfpk.llm.particles): energy, metric, scores."""

from __future__ import annotations

import torch

from sfpk.llm.particles import (
    ParticleOptions,
    _metric,
    energy_forces,
    hessian_sqrt,
    particle_scores,
)


def _layer(rows: int = 5, cols: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    inputs = torch.randn(40, cols, generator=gen, dtype=torch.float64)
    inputs = inputs @ (torch.eye(cols) + torch.randn(cols, cols, generator=gen) / 2).double()
    return weight, inputs.T @ inputs / 40


def test_force_is_minus_the_gradient_of_the_reconstruction_energy():
    """The closed-form force must equal -dE/db of E(b) = ||((1-b)⊙W) F||² (autograd)."""
    weight, hessian = _layer()
    factor = hessian_sqrt(hessian)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)).double()
    mask.requires_grad_(True)
    energy = (((1 - mask) * weight) @ factor).square().sum()
    (grad,) = torch.autograd.grad(energy, mask)
    delta = ((1 - mask) * weight).detach()[None]
    force = energy_forces(delta, weight, factor[None], 1.0)[0]
    torch.testing.assert_close(force, -grad)


def test_square_root_factor_reproduces_the_gram_matrix():
    """F Fᵀ = H, so the energy ||ΔW F||² is tr(ΔW H ΔWᵀ) = ||ΔW X||²/T."""
    _, hessian = _layer()
    factor = hessian_sqrt(hessian)
    torch.testing.assert_close(factor @ factor.T, hessian)


def test_compensated_metric_prices_one_removed_weight_at_its_obs_error():
    """K_jj w_j² must equal w_j² / [H⁻¹]_jj, the error after SparseGPT's compensation."""
    _, hessian = _layer()
    options = ParticleOptions(energy="compensated", damping=0.01)
    metric = _metric(hessian, options)
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(6, dtype=hessian.dtype)
    torch.testing.assert_close(metric.diagonal(), 1 / torch.linalg.inv(damped).diagonal())
    assert torch.linalg.eigvalsh(metric).min() > 0


def test_scores_are_reproducible_by_generator_seed():
    """Equal generator seeds must give equal scores (the mini-batch draws are the only noise)."""
    weight, hessian = _layer(rows=8, cols=8)
    options = ParticleOptions(num_particles=3, num_steps=5)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return particle_scores(
            weight, hessian, sparsity=0.5, nm=None, options=options, generator=gen
        )[0]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
