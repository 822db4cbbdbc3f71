"""The SFPK formulas of docs/sfpk-method.md §2 on small hand-checkable cases."""

from __future__ import annotations

import math

import pytest
import torch

from sfpk.errors import ConfigError
from sfpk.pruners.particles.dynamics import (
    EPS,
    drift,
    dt_schedule,
    layer_drift,
    layer_size_and_gradient,
    parse_size_functional,
    radius_at,
    repulsion,
    size_and_gradient,
)
from sfpk.pruners.particles.processors import ThresholdLayout, binarize, process, quantile
from sfpk.pruners.particles.voting import hard_cut, rank_voters, score_weight, vote

F64 = torch.float64


def _one(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=F64)


# -- G ----------------------------------------------------------------------------------------
def test_l2_size_and_gradient_by_hand():
    """G(3,4) = 5/sqrt(2) and -∇G = -m/(5 sqrt 2) for two unstructured entries."""
    m = torch.tensor([[3.0, 4.0]], dtype=F64)
    value, g = size_and_gradient(m, parse_size_functional("l2"), total=2)
    assert value.item() == pytest.approx(5 / math.sqrt(2), rel=1e-12)
    assert torch.allclose(g, -m / (5 * math.sqrt(2)), rtol=1e-12)


@pytest.mark.parametrize("name", ["l1", "l2", "l1.5", "l3"])
@pytest.mark.parametrize("structured", [False, True])
def test_size_gradient_equals_autograd(name, structured):
    """The closed-form -∇G equals autograd for every functional, with group weights."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(3, 7, generator=gen, dtype=F64)
    weights = torch.tensor([4.0, 4, 4, 2, 2, 1, 1], dtype=F64) if structured else None
    functional = parse_size_functional(name)
    value, g = size_and_gradient(m, functional, total=19, weights=weights)
    leaf = m.clone().requires_grad_(True)
    p = functional.power
    w = weights if weights is not None else torch.ones(7, dtype=F64)
    if p == 1.0:
        ref = (w * leaf.abs()).sum(1) / 19
    else:
        ref = ((w * leaf.abs() ** p).sum(1) + EPS) ** (1 / p) / (19 ** (1 / p) + EPS)
    (grad,) = torch.autograd.grad(ref.sum(), leaf)
    assert torch.allclose(value, ref.detach(), rtol=1e-10)
    assert torch.allclose(g, -grad, rtol=1e-8, atol=1e-14)


def test_per_layer_size_values_and_gradient():
    """Local scope: G_l = ‖m_l‖/sqrt(numel θ_l) per layer, each with its own gradient."""
    m = torch.tensor([[3.0, 4.0, 1.0, 1.0, 1.0]], dtype=F64)
    ids = torch.tensor([0, 0, 1, 1, 1])
    value, g = layer_size_and_gradient(
        m, parse_size_functional("l2"), layer_ids=ids, layer_totals=torch.tensor([2.0, 3.0])
    )
    assert torch.allclose(value, torch.tensor([[5 / math.sqrt(2), 1.0]], dtype=F64))
    assert torch.allclose(g[0, :2], -m[0, :2] / (5 * math.sqrt(2)))
    assert torch.allclose(g[0, 2:], -m[0, 2:] / (math.sqrt(3) * math.sqrt(3)))


@pytest.mark.parametrize("name", ["l1", "l2", "l1.5"])
@pytest.mark.parametrize("weighted", [False, True])
def test_size_gradient_written_into_a_buffer_is_bitwise_the_fresh_one(name, weighted):
    """The engine passes its -∇G buffer as ``out``, which also holds w|m|^p for a moment:
    the result must be exactly the one computed into a new tensor, globally and per layer."""
    gen = torch.Generator().manual_seed(4)
    m = torch.rand(3, 40, generator=gen) * 2 - 0.5
    weights = torch.rand(40, generator=gen) * 3 if weighted else None
    functional = parse_size_functional(name)
    fresh = size_and_gradient(m, functional, total=55, weights=weights)
    buffer = torch.full_like(m, math.nan)
    into = size_and_gradient(m, functional, total=55, weights=weights, out=buffer)
    assert into[1] is buffer
    assert torch.equal(fresh[0], into[0]) and torch.equal(fresh[1], into[1])
    ids = torch.arange(40) // 15
    totals = torch.tensor([20.0, 20.0, 15.0], dtype=F64)
    fresh = layer_size_and_gradient(m, functional, layer_ids=ids, layer_totals=totals)
    into = layer_size_and_gradient(
        m, functional, layer_ids=ids, layer_totals=totals, out=torch.full_like(m, math.nan)
    )
    assert torch.equal(fresh[0], into[0]) and torch.equal(fresh[1], into[1])


@pytest.mark.parametrize("bad", ["l0.5", "lx", "l1p", "max"])
def test_bad_size_functional_is_rejected(bad):
    """The reference's help text advertises 'l1p', which crashes; we reject it clearly."""
    with pytest.raises(ConfigError, match="size_functional"):
        parse_size_functional(bad)


# -- dt / r_t ---------------------------------------------------------------------------------
def test_exp_schedule_values_quoted_in_the_spec():
    """start=1, ρ=0.05, N=100: dt_0 ≈ 0.02951, dt_99 ≈ 0.00152, Σ dt = 0.95 (spec §2.3)."""
    dts = [dt_schedule("exp", t, 100, _one(1.0), _one(0.05)).item() for t in range(100)]
    assert dts[0] == pytest.approx(0.02951, abs=5e-6)
    assert dts[99] == pytest.approx(0.00152, abs=5e-6)
    assert sum(dts) == pytest.approx(0.95, rel=1e-12)


@pytest.mark.parametrize("kind", ["exp", "lin", "invexp"])
def test_schedules_sum_to_start_minus_end(kind):
    """Every fixed schedule drives G exactly from start to the target in N steps."""
    start, end = torch.tensor([1.0, 0.9], dtype=F64), torch.tensor([0.3, 0.3], dtype=F64)
    total = sum(dt_schedule(kind, t, 10, start, end) for t in range(10))
    assert torch.allclose(total, start - end, rtol=1e-12)


def test_invexp_is_the_reverse_of_exp():
    """invexp takes small steps first, exp large steps first."""
    exp = [dt_schedule("exp", t, 10, _one(1.0), _one(0.1)).item() for t in range(10)]
    inv = [dt_schedule("invexp", t, 10, _one(1.0), _one(0.1)).item() for t in range(10)]
    assert exp == sorted(exp, reverse=True) and inv == sorted(inv)


def test_adalin_spreads_the_remaining_gap():
    """adaLin: dt = (G - ρ)/(N - t)."""
    dt = dt_schedule("adalin", 6, 10, _one(1.0), _one(0.2), level=_one(0.6))
    assert dt.item() == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["hess", "hessexp", "adaexp", "nope"])
def test_broken_or_unknown_dt_schedules_raise(kind):
    """The reference's broken schedules are rejected with the list of working ones."""
    with pytest.raises(ConfigError, match="exp, lin, invexp, adalin"):
        dt_schedule(kind, 0, 10, _one(1.0), _one(0.5))


def test_radius_schedules():
    """fix is r; invexp grows to 4 at the last step; hess calibrates r at the first step."""
    norms = torch.tensor([2.0, 4.0], dtype=F64)
    cal = torch.full((2,), math.nan, dtype=F64)
    assert radius_at("fix", 3, 10, 1.4, norms, cal).tolist() == [1.4, 1.4]
    assert radius_at("invexp", 9, 10, 1.4, norms, cal)[0].item() == pytest.approx(4.0)
    assert radius_at("invexp", 0, 10, 1.4, norms, cal)[0].item() == pytest.approx(
        4 * (1.4 / 4) ** 0.9
    )
    assert torch.allclose(
        radius_at("hess", 0, 10, 1.4, norms, cal), torch.full((2,), 1.4, dtype=F64)
    )
    later = radius_at("hess", 1, 10, 1.4, norms * 2, cal)
    assert torch.allclose(later, torch.full((2,), 1.8, dtype=F64))
    with pytest.raises(ConfigError, match="auto"):
        radius_at("auto", 0, 10, 1.4, norms, cal)


# -- drift ------------------------------------------------------------------------------------
def test_drift_identities():
    """⟨δ, g⟩ = 1 and ‖δ‖ = r/‖g‖: the step lowers G by dt at the given radius (§2.7)."""
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(4, 50, generator=gen, dtype=F64)
    e = torch.randn(4, 50, generator=gen, dtype=F64)
    radius = torch.tensor([1.1, 1.4, 2.0, 3.0], dtype=F64)
    delta, _, _ = drift(e.clone(), g, radius)
    assert torch.allclose((delta * g).sum(1), torch.ones(4, dtype=F64), rtol=1e-9)
    assert torch.allclose(delta.norm(dim=1), radius / g.norm(dim=1), rtol=1e-9)


def test_drift_equals_the_stable_form():
    """δ = g/‖g‖² + sqrt(r²-1) e⊥/(‖g‖‖e⊥‖): it is the steepest energy descent at that size."""
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(1, 30, generator=gen, dtype=F64)
    e = torch.randn(1, 30, generator=gen, dtype=F64)
    delta, _, _ = drift(e.clone(), g, torch.tensor([1.4], dtype=F64))
    perp = e - (e * g).sum() / (g * g).sum() * g
    stable = g / (g * g).sum() + math.sqrt(1.4**2 - 1) * perp / (g.norm() * perp.norm())
    assert torch.allclose(delta, stable, rtol=1e-8)


def test_drift_with_a_scratch_buffer_is_bitwise_the_same():
    """The engine lends its work buffer to the drift: same δ, x and y to the last bit."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 64, generator=gen)
    e = torch.randn(4, 64, generator=gen)
    radius = torch.tensor([1.1, 1.4, 2.0, 3.0], dtype=F64)
    plain = drift(e.clone(), g, radius)
    lent = drift(e.clone(), g, radius, scratch=torch.full_like(g, math.nan))
    assert all(torch.equal(a, b) for a, b in zip(plain, lent, strict=True))


def test_layer_drift_identities_per_layer():
    """ode_scope local: the identities hold within every layer."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 9, generator=gen, dtype=F64)
    e = torch.randn(2, 9, generator=gen, dtype=F64)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    delta, _, _ = layer_drift(e.clone(), g, torch.tensor([1.4, 2.0], dtype=F64), ids, 2)
    for lo, hi in ((0, 4), (4, 9)):
        assert torch.allclose((delta[:, lo:hi] * g[:, lo:hi]).sum(1), torch.ones(2, dtype=F64))
        expected = torch.tensor([1.4, 2.0], dtype=F64) / g[:, lo:hi].norm(dim=1)
        assert torch.allclose(delta[:, lo:hi].norm(dim=1), expected)


# -- repulsion --------------------------------------------------------------------------------
def _pairwise(masks, mode, a1, a2, structured):
    """The reference's per-particle, per-pair kernel, differentiated by autograd (Z detached)."""
    n = masks.shape[0]
    forces, values = [], []
    for i in range(n):
        m = masks[i].clone().requires_grad_(True)
        s_m = (a1 * m.detach() ** 2).sum()
        total = 0.0
        for j in range(n):
            s_j = (a1 * masks[j] ** 2).sum()
            if mode == "exp":
                z = (s_j + EPS) if structured else torch.sqrt(s_m * s_j + EPS)
                total = total + torch.exp(-(a2 * (m - masks[j]) ** 2).sum() / z)
            else:
                total = total + (a1 * m * masks[j]).sum() / torch.sqrt(s_m * s_j + EPS)
        kernel = total / n
        (grad,) = torch.autograd.grad(kernel, m)
        forces.append(-grad)
        values.append(kernel.detach())
    return torch.stack(forces), torch.stack(values)


@pytest.mark.parametrize("mode", ["exp", "cos"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("structured", [False, True])
def test_batched_repulsion_equals_per_pair_sum(mode, weighted, structured):
    """The Gram-matrix form gives exactly the reference's per-pair forces and kernel values."""
    gen = torch.Generator().manual_seed(4)
    masks = 1 + 0.3 * torch.randn(5, 12, generator=gen, dtype=F64)
    theta_abs = torch.rand(12, generator=gen, dtype=F64) + 0.1
    group = torch.tensor([3.0] * 6 + [2.0] * 6, dtype=F64)
    if weighted:
        a1 = theta_abs * (group if structured else 1)
        a2 = theta_abs**2 * (group if structured else 1)
    else:
        a1 = a2 = group if structured else torch.ones(12, dtype=F64)
    force, kernel = repulsion(
        masks,
        mode=mode,
        sqrt_numerator_weight=a2.sqrt(),
        normalizer_weight=a1,
        structured=structured,
        out=torch.empty_like(masks),
    )
    ref_force, ref_kernel = _pairwise(masks, mode, a1, a2, structured)
    assert torch.allclose(force, ref_force, rtol=1e-9, atol=1e-12)
    assert torch.allclose(kernel, ref_kernel, rtol=1e-9)


def test_exp_repulsion_vanishes_for_coinciding_particles():
    """At t=0 all particles are equal: K = 1, R = 0 (spec §2.9)."""
    masks = torch.ones(3, 5, dtype=F64)
    force, kernel = repulsion(
        masks, mode="exp", sqrt_numerator_weight=None, normalizer_weight=None,
        structured=False, out=torch.empty_like(masks),
    )  # fmt: skip
    assert torch.equal(force, torch.zeros_like(masks))
    assert torch.allclose(kernel, torch.ones(3, dtype=F64))


def test_exp_repulsion_pushes_particles_apart():
    """R_i points from m_j towards m_i."""
    masks = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    force, _ = repulsion(
        masks + 1, mode="exp", sqrt_numerator_weight=None, normalizer_weight=None,
        structured=False, out=torch.empty_like(masks),
    )  # fmt: skip
    assert force[0, 0] > 0 > force[1, 0]


# -- processors -------------------------------------------------------------------------------
def test_ohh_keeps_p_minus_k_plus_one_by_magnitude():
    """k = ⌊(1-G)P⌋, τ = k-th smallest |mθ|, keep ≥ τ: P-k+1 entries (spec §2.4)."""
    m = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.1, 1.5])
    theta = torch.tensor([1.0, 1.0, 4.0, 1.0, 1.0, 1.0])  # |mθ| = 1, 2, 2, 3, .1, 1.5
    value, grad_fn = process("ohh", m, theta, 0.5, ThresholdLayout())  # k = 3
    assert value.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert grad_fn is None


def test_no_thresholding_below_one_removal():
    """k < 1: the continuous mask is used unchanged (start of the run)."""
    m = torch.tensor([0.9, 1.1, 1.0])
    value, _ = process("ohh", m, None, 0.9, ThresholdLayout())
    assert torch.equal(value, m)


def test_local_thresholds_and_the_reference_k_equals_one_rule():
    """Local scope: per-layer k_l; the reference keeps a layer continuous when k_l ≤ 1."""
    m = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.7, 0.9, 1.1])
    segments = ((0, 4), (4, 8))
    literal, _ = process("ohh", m, None, 0.6, ThresholdLayout(segments))  # k_l = 1
    assert torch.equal(literal, torch.ones(8))
    reference, _ = process("ohh", m, None, 0.6, ThresholdLayout(segments, skip_at_one=True))
    assert torch.equal(reference, m)
    mixed, _ = process("ohh", m, None, [0.4, 0.9], ThresholdLayout(segments, skip_at_one=True))
    assert torch.equal(mixed, torch.cat([torch.tensor([0.0, 1.0, 1.0, 1.0]), m[4:]]))


def test_structured_global_threshold_counts_weights():
    """Global structured: rank by score per weight, remove up to (1-G)·P weights."""
    rank = torch.tensor([8.0, 1.0, 6.0, 2.0])  # per weight: 2, 0.25, 3, 1
    weight = torch.tensor([4.0, 4.0, 2.0, 2.0])
    layout = ThresholdLayout(entry_weight=weight, total_weights=12)
    keep, _ = binarize(rank, 0.5, layout)  # remove ≤ 6 weights: 0.25 (4), 1 (2) -> k = 2
    assert keep.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_processor_gradients():
    """ohm: u⊙b; oh: u⊙b/m; ohhm forwards m⊙b with a straight-through gradient."""
    m = torch.tensor([2.0, -1.0, 0.5, 4.0])
    u = torch.tensor([1.0, 1.0, 1.0, 1.0])
    value, grad_fn = process("ohm", m, None, 0.5, ThresholdLayout())  # k=2 keeps |m| ≥ 1
    assert value.tolist() == [2.0, -1.0, 0.0, 4.0] and grad_fn(u).tolist() == [1, 1, 0, 1]
    value, grad_fn = process("oh", m, None, 0.5, ThresholdLayout())
    assert value.tolist() == [1, 1, 0, 1] and grad_fn(u).tolist() == [0.5, -1.0, 0.0, 0.25]
    value, grad_fn = process("ohhm", m, None, 0.5, ThresholdLayout())
    assert value.tolist() == [2.0, -1.0, 0.0, 4.0] and grad_fn is None


@pytest.mark.parametrize("kind", ["qt", "gau"])
def test_soft_processors_are_calibrated_and_differentiable(kind):
    """qt/gau map the quantile band onto (1-eps, eps) and pass gradients through c."""
    gen = torch.Generator().manual_seed(5)
    m = torch.rand(200, generator=gen, dtype=F64) + 0.01
    value, grad_fn = process(kind, m, None, 0.5, ThresholdLayout(), eps=0.9, ratio=0.9)
    assert ((value >= 0) & (value <= 1)).all() and ((value > 0.05) & (value < 0.95)).any()
    if kind == "qt":
        hi, lo = torch.quantile(m, 0.5), torch.quantile(m, 0.45)
        at = process(kind, torch.cat([m, hi[None], lo[None]]), None, 0.5, ThresholdLayout())[0]
        assert at[-2].item() == pytest.approx(0.9, abs=0.02)
    grad = grad_fn(torch.ones_like(m))
    assert grad.shape == m.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    value_m, grad_m = process(kind + "m", m, None, 0.5, ThresholdLayout())
    assert torch.allclose(value_m, value * m) and torch.allclose(grad_m(torch.ones_like(m)), value)


def test_quantile_matches_torch():
    """Our sort-based quantile equals torch.quantile (which fails above ~16M entries)."""
    values = torch.randn(101, generator=torch.Generator().manual_seed(6))
    for q in (0.0, 0.13, 0.5, 0.77, 1.0):
        assert torch.allclose(quantile(values, q), torch.quantile(values, q))


# -- scores and votes -------------------------------------------------------------------------
def test_voters_are_the_lowest_energy_particles():
    """⌈ratio·n⌉ lowest energies, stable; ratio 0 selects all, like 1."""
    energies = torch.tensor([0.3, 0.1, 0.2, 0.1])
    order, voters = rank_voters(energies, 0.5)
    assert order.tolist() == [1, 3, 2, 0] and voters.tolist() == [1, 3]
    assert rank_voters(energies, 0.0)[1].tolist() == [1, 3, 2, 0]
    assert rank_voters(energies, 0.6)[1].tolist() == [1, 3, 2]


def test_score_types():
    """mp = |m|·|θ|, m = |m|, mpz = |m|(|θ| + 1e-4) (summed over groups when structured)."""
    theta = torch.tensor([2.0, 0.0])
    assert score_weight("mp", theta, None) is theta
    assert score_weight("m", theta, None) is None
    assert torch.allclose(score_weight("mpz", theta, None), torch.tensor([2.0001, 1e-4]))
    groups = torch.tensor([3.0, 3.0])
    assert torch.allclose(score_weight("mpz", theta, groups), torch.tensor([2.0003, 3e-4]))


def test_soft_vs_hard_vote():
    """Soft averages the raw scores; hard first cuts each at the target (> τ), keeping values."""
    particles = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    soft = vote(particles, [0, 1], mode="soft", weight=None, density=0.5,
                layout=ThresholdLayout(), alive=None)  # fmt: skip
    assert soft.tolist() == [2.5, 2.5, 2.5, 2.5]
    hard = vote(particles, [0, 1], mode="hard", weight=None, density=0.5,
                layout=ThresholdLayout(), alive=None)  # fmt: skip
    assert hard.tolist() == [2.0, 1.5, 1.5, 2.0]  # [0,0,3,4] and [4,3,0,0] averaged
    only_first = vote(particles, [0], mode="hard", weight=None, density=0.5,
                      layout=ThresholdLayout(), alive=None)  # fmt: skip
    assert only_first.tolist() == [0.0, 0.0, 3.0, 4.0]


def test_hard_cut_per_layer():
    """Hard voting under local scope cuts every layer at its own threshold (§9.4)."""
    score = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    cut = hard_cut(score, 0.5, ThresholdLayout(((0, 4), (4, 6))))
    assert cut.tolist() == [0.0, 0.0, 3.0, 4.0, 0.0, 20.0]
