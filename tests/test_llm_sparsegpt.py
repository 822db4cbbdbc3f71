"""SparseGPT on one weight matrix (sfpk.llm.sparsegpt): OBS updates, exact counts, dead inputs."""

from __future__ import annotations

import pytest
import torch

from sfpk.llm.sparsegpt import sparsegpt


def _layer(rows: int = 4, cols: int = 8, tokens: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    inputs = torch.randn(tokens, cols, generator=gen, dtype=torch.float64)
    # correlated inputs (as real activations are), so the OBS update matters
    inputs = inputs @ (torch.eye(cols) + torch.randn(cols, cols, generator=gen) / 2).double()
    return weight, inputs, inputs.T @ inputs / tokens


def _damped_inverse(hessian: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    h = 2.0 * hessian
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.inv(h + damping * h.diagonal().mean() * eye)


def test_first_column_update_equals_closed_form_obs():
    """Removing one weight must move the others by the OBS formula -w_q/[H⁻¹]_qq · H⁻¹[q, :]."""
    weight, _, hessian = _layer()
    mask = torch.ones_like(weight)
    mask[:, 0] = 0.0
    new, _ = sparsegpt(weight, hessian, sparsity=0.5, mask=mask)
    inverse = _damped_inverse(hessian)
    expected = weight - (weight[:, :1] / inverse[0, 0]) * inverse[0][None, :]
    torch.testing.assert_close(new, expected)


def test_later_column_update_is_obs_over_the_remaining_columns():
    """A weight removed at column q only moves columns > q, by OBS on H restricted to them."""
    weight, _, hessian = _layer()
    q = 3
    mask = torch.ones_like(weight)
    mask[:, q] = 0.0
    new, _ = sparsegpt(weight, hessian, sparsity=0.5, mask=mask)
    h = 2.0 * hessian
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.linalg.inv(damped[q:, q:])
    expected = weight.clone()
    expected[:, q:] -= (weight[:, q : q + 1] / inverse[0, 0]) * inverse[0][None, :]
    torch.testing.assert_close(new, expected)
    torch.testing.assert_close(new[:, :q], weight[:, :q])


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_update_reconstructs_better_than_the_mask_alone(nm):
    """SparseGPT's weight update must lower ||WX - ŴX|| below that of its own mask unchanged."""
    weight, inputs, hessian = _layer(rows=16, cols=32, tokens=256)
    new, keep = sparsegpt(weight, hessian, sparsity=0.5, nm=nm)
    with_update = (inputs @ (weight - new).T).norm()
    mask_only = (inputs @ (weight - weight * keep).T).norm()
    assert with_update < 0.9 * mask_only


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.7])
def test_every_row_loses_exactly_floor_sparsity_times_width(sparsity):
    """Per-row counts must be exact also when blocks split the row (block_size 4 of 10)."""
    weight, _, hessian = _layer(rows=5, cols=10)
    new, keep = sparsegpt(weight, hessian, sparsity=sparsity, block_size=4)
    removed = int(sparsity * 10 + 1e-9)
    assert ((keep == 0).sum(1) == removed).all()
    assert (new[keep == 0] == 0).all() and (new[keep == 1] != 0).all()


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_every_nm_group_keeps_exactly_n(nm):
    """Each group of M consecutive input weights must keep exactly N (the GPU 2:4 format)."""
    weight, _, hessian = _layer(rows=6, cols=16)
    new, keep = sparsegpt(weight, hessian, sparsity=1 - nm[0] / nm[1], nm=nm, block_size=6)
    groups = keep.reshape(6, -1, nm[1])
    assert (groups.sum(2) == nm[0]).all()
    assert (new[keep == 0] == 0).all()


def test_dead_input_columns_are_pruned_first_and_stay_finite():
    """Inputs that never fire (zero diagonal) must not break the Cholesky and go first."""
    weight, inputs, _ = _layer(rows=4, cols=8)
    inputs[:, [2, 5]] = 0.0
    hessian = inputs.T @ inputs / inputs.shape[0]
    new, keep = sparsegpt(weight, hessian, sparsity=0.25)
    assert torch.isfinite(new).all()
    assert (keep[:, [2, 5]] == 0).all() and (keep.sum(1) == 6).all()


def test_fixed_mask_is_kept_as_given():
    """With a fixed mask (SFPK's vote) only the reconstruction runs: the mask comes back as is."""
    weight, _, hessian = _layer()
    mask = (torch.rand(weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    new, keep = sparsegpt(weight, hessian, sparsity=0.5, mask=mask)
    assert torch.equal(keep, mask)
    assert (new[mask == 0] == 0).all()
