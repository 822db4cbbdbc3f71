"""The SFPK / SpODE dynamics as pure tensor functions (method spec docs/sfpk-method.md §2).

Every function here works on a batch of particles held as one ``[n, P]`` tensor (one row per
particle, the masks flattened in mask-name order, method spec "Flattening for global
operations"). Nothing here touches a model: the engine (:mod:`sfpk.pruners.engine`) calls
these between the network passes. Per-layer ("local") variants take ``layer_ids``, a ``[P]``
long tensor giving the layer index of every flat entry.

Numerical conventions follow the reference, including its ``1e-12`` guards (``EPS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import ConfigError

__all__ = [
    "EPS",
    "SizeFunctional",
    "parse_size_functional",
    "segment_sum",
    "size_and_gradient",
    "layer_size_and_gradient",
    "DT_SCHEDULES",
    "dt_schedule",
    "RADIUS_SCHEDULES",
    "radius_at",
    "drift",
    "layer_drift",
    "repulsion",
    "mean_distance",
]

EPS = 1e-12
DT_SCHEDULES = ("exp", "lin", "invexp", "adalin")
_BROKEN_DT = ("hess", "hessexp", "adaexp")
RADIUS_SCHEDULES = ("fix", "invexp", "hess")
_BROKEN_RADIUS = ("auto", "autor")
_R_MAX = 4.0  # the reference's cap for the growing r_t schedules (spec §2.7)


# -- mask-size functional G (spec §2.2) -----------------------------------------------------
@dataclass(frozen=True)
class SizeFunctional:
    """``G`` of spec §2.2: ``l2`` (default), ``l1`` or ``l<p>`` for a float ``p >= 1``."""

    power: float

    @property
    def name(self) -> str:
        """The option spelling, e.g. ``"l2"``."""
        return f"l{self.power:g}"


def parse_size_functional(name: str) -> SizeFunctional:
    """Parse ``"l2"``, ``"l1"`` or ``"l<p>"`` (e.g. ``"l1.5"``).

    Raises:
        ConfigError: anything else, or ``p < 1``.
    """
    text = str(name).strip().lower()
    try:
        power = float(text[1:]) if text.startswith("l") else math.nan
    except ValueError:
        power = math.nan
    if not power >= 1.0:  # also catches nan
        raise ConfigError(
            f"size_functional={name!r}; choose 'l2', 'l1' or 'l<p>' with a float p >= 1"
        )
    return SizeFunctional(power)


def segment_sum(values: Tensor, layer_ids: Tensor, num_layers: int) -> Tensor:
    """Sum ``[n, P]`` values within each layer: returns ``[n, num_layers]``."""
    out = values.new_zeros((values.shape[0], num_layers))
    return out.index_add_(1, layer_ids, values)


def _powered(masks: Tensor, power: float, weights: Tensor | None, out: Tensor) -> Tensor:
    """``w * |m|^p`` element-wise, written into ``out``."""
    if power == 2.0:
        torch.mul(masks, masks, out=out)
    else:
        torch.abs(masks, out=out).pow_(power)
    return out.mul_(weights) if weights is not None else out


def _grad_factor(
    masks: Tensor, power: float, weights: Tensor | None, out: Tensor, scale: Tensor | float
) -> Tensor:
    """``w * sign(m) * |m|^(p-1) * scale`` (the p-norm's element-wise derivative times
    ``scale``), written into ``out``."""
    if power == 2.0 and weights is None:
        return torch.mul(masks, scale, out=out)  # one pass instead of a copy and a multiply
    if power == 2.0:
        torch.mul(masks, weights, out=out)
    elif power == 1.0:
        torch.sign(masks, out=out)
    else:
        torch.sign(masks, out=out).mul_(masks.abs().pow(power - 1.0))
    if weights is not None and power != 2.0:
        out.mul_(weights)
    return out.mul_(scale)


def size_and_gradient(
    masks: Tensor,
    functional: SizeFunctional,
    *,
    total: int,
    weights: Tensor | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Global ``G(m_i)`` and ``g_i = -∇G(m_i)`` for every particle, in closed form (spec §2.2).

    Args:
        masks: ``[n, P]`` particles.
        functional: which G.
        total: number of **weights** the masks control (``P`` of the spec, not mask entries).
        weights: ``[P]`` weights per mask entry (structured: the ``s_l`` of spec §2.2), or
            None for unstructured masks (all ones).
        out: optional ``[n, P]`` buffer for ``g``.

    Returns:
        ``(G [n], g [n, P])``. l2: ``G = sqrt(Σ w m² + 1e-12) / (sqrt(P) + 1e-12)``; l1:
        ``G = Σ w|m| / P``; l<p>: ``(Σ w|m|^p + 1e-12)^(1/p) / (P^(1/p) + 1e-12)``.
    """
    p = functional.power
    g = out if out is not None else torch.empty_like(masks)
    # g holds w|m|^p until its row sums are taken, then the gradient.
    if p == 1.0:
        value = _powered(masks, 1.0, weights, g).sum(1) / total
        _grad_factor(masks, 1.0, weights, g, -1.0 / total)
        return value, g
    norm_p = _powered(masks, p, weights, g).sum(1).add_(EPS).pow_(1.0 / p)
    scale = total ** (1.0 / p) + EPS
    value = norm_p / scale
    # d/dm (Σ w|m|^p + eps)^(1/p) = w sign(m)|m|^(p-1) (Σ ...)^(1/p - 1)
    coef = norm_p.pow(1.0 - p).mul_(-1.0 / scale)
    _grad_factor(masks, p, weights, g, coef[:, None])
    return value, g


def layer_size_and_gradient(
    masks: Tensor,
    functional: SizeFunctional,
    *,
    layer_ids: Tensor,
    layer_totals: Tensor,
    weights: Tensor | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-layer ``G_l(m_i)`` and ``g = -∇G_l`` (spec §2.2, ``ode_scope local``).

    ``G_l = (Σ_{j in l} w_j |m_j|^p)^(1/p) / numel(θ_l)^(1/p)`` (l2: ``‖m_l‖_w / sqrt(numel)``,
    l1: ``Σ w|m| / numel``). ``layer_totals`` holds ``numel(θ_l)`` as a float tensor ``[L]``.

    Returns:
        ``(G [n, L], g [n, P])``; row ``i`` of ``g`` holds every layer's own gradient.
    """
    p = functional.power
    num_layers = layer_totals.numel()
    g = out if out is not None else torch.empty_like(masks)
    totals = layer_totals.to(masks.dtype)
    sums = segment_sum(_powered(masks, p, weights, g), layer_ids, num_layers)
    if p == 1.0:
        _grad_factor(masks, 1.0, weights, g, -(1.0 / totals)[layer_ids])
        return sums / totals, g
    norm_p = sums.add_(EPS).pow_(1.0 / p)
    scale = totals.pow(1.0 / p)
    coef = norm_p.pow(1.0 - p).div_(scale).neg_()
    _grad_factor(masks, p, weights, g, coef[:, layer_ids])
    return norm_p / scale, g


# -- dt and r_t schedules (spec §2.3, §2.7) -------------------------------------------------
def dt_schedule(
    kind: str, step: int, num_steps: int, start: Tensor, end: Tensor, level: Tensor | None = None
) -> Tensor:
    """The decrement ``dt_t`` of G at step ``step`` (0-based) of ``num_steps`` (spec §2.3).

    ``start``/``end`` are float64 tensors, one value (global) or one per layer (local);
    ``level`` is the current G (mean over particles), needed by ``adalin`` only.

    * ``exp``: ``ρ[(s/ρ)^(1-t/N) - (s/ρ)^(1-(t+1)/N)]`` (geometric path, large steps first);
    * ``lin``: ``(s - ρ)/N``;
    * ``invexp``: ``s[(ρ/s)^(1-(t+1)/N) - (ρ/s)^(1-t/N)]`` (small steps first);
    * ``adalin``: ``(G - ρ)/(N - t)``.

    Raises:
        ConfigError: an unknown kind, or ``hess``/``hessexp``/``adaexp``, which are broken in
            the reference (spec §8.16) and deliberately not offered.
    """
    t, n = float(step), float(num_steps)
    if kind == "exp":
        ratio = start / end
        return end * (ratio.pow(1.0 - t / n) - ratio.pow(1.0 - (t + 1.0) / n))
    if kind == "lin":
        return (start - end) / n
    if kind == "invexp":
        ratio = end / start
        return start * (ratio.pow(1.0 - (t + 1.0) / n) - ratio.pow(1.0 - t / n))
    if kind == "adalin":
        if level is None:
            raise ConfigError("dt_schedule 'adalin' needs the current level G")
        return (level - end) / (n - t)
    if kind in _BROKEN_DT:
        raise ConfigError(
            f"dt_schedule={kind!r} is broken in the reference (method spec §8.16) and not "
            f"offered; choose one of {', '.join(DT_SCHEDULES)}"
        )
    raise ConfigError(f"dt_schedule={kind!r}; choose one of {', '.join(DT_SCHEDULES)}")


def radius_at(
    kind: str, step: int, num_steps: int, ratio: float, force_norm: Tensor, calibration: Tensor
) -> Tensor:
    """``r_t`` per particle (spec §2.7). Returns a float64 ``[n]`` tensor.

    * ``fix``: ``r``; ``invexp``: ``4 (r/4)^(1-(t+1)/N)``, growing from ≈ r to 4;
    * ``hess``: ``clip(1 + c_i ‖e_i‖, 1.01, 4)`` with ``c_i = (r-1)/‖e_i‖`` calibrated per
      particle at its first step (``calibration`` holds ``c_i``; NaN means "not yet"). The
      reference shares one c, overwritten by every particle at t=0; per-particle is our choice.

    Raises:
        ConfigError: unknown kind, or ``auto``/``autor`` (crash in the reference, §8.16).
    """
    norms = force_norm.to(torch.float64)
    if kind == "fix":
        return torch.full_like(norms, ratio)
    if kind == "invexp":
        value = _R_MAX * (ratio / _R_MAX) ** (1.0 - (step + 1.0) / num_steps)
        return torch.full_like(norms, value)
    if kind == "hess":
        fresh = torch.isnan(calibration)
        calibration[fresh] = (ratio - 1.0) / norms[fresh].clamp_min(EPS)
        return (1.0 + calibration * norms).clamp(1.01, _R_MAX)
    if kind in _BROKEN_RADIUS:
        raise ConfigError(
            f"radius_schedule={kind!r} is broken in the reference (method spec §8.16) and not "
            f"offered; choose one of {', '.join(RADIUS_SCHEDULES)}"
        )
    raise ConfigError(f"radius_schedule={kind!r}; choose one of {', '.join(RADIUS_SCHEDULES)}")


# -- drift (spec §2.7) ----------------------------------------------------------------------
def _drift_coefficients(
    gg: Tensor, ee: Tensor, ge: Tensor, radius: Tensor, inner_eps: float
) -> tuple[Tensor, Tensor]:
    """x and y of spec §2.7 from ‖g‖², ‖e‖², ⟨g,e⟩ (float64)."""
    x = torch.sqrt((radius.square() - 1.0 + inner_eps) / (gg * ee - ge.square() + EPS) + EPS)
    y = (1.0 - x * ge) / (gg + EPS)
    return x, y


def drift(
    force: Tensor, neg_grad: Tensor, radius: Tensor, *, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Overwrite ``force`` (``e``, ``[n, P]``) with the drift ``δ = x e + y g`` (spec §2.7).

    ``‖v‖ = sqrt(Σ v² + 1e-12)``; ``x = sqrt((r²-1+ε)/((‖g‖‖e‖)² - ⟨g,e⟩² + ε) + ε)``,
    ``y = (1 - x⟨g,e⟩)/(‖g‖² + ε)``. Then ``⟨δ, g⟩ = 1`` and ``‖δ‖ = r/‖g‖`` (up to ε): the
    step ``dt·δ`` lowers G by ``dt`` to first order and, among such steps of that length,
    lowers E the most. x and y are computed in float64.

    ``scratch`` (optional, ``[n, P]``) receives ``y g`` instead of a new tensor.

    Returns:
        ``(δ, x, y)``; ``δ`` is ``force`` itself.
    """
    # Row reductions in the model dtype (torch sums pairwise), the scalars in float64.
    gg = torch.linalg.vecdot(neg_grad, neg_grad).double() + EPS
    ee = torch.linalg.vecdot(force, force).double() + EPS
    ge = torch.linalg.vecdot(neg_grad, force).double()
    x, y = _drift_coefficients(gg, ee, ge, radius, EPS)
    pull = torch.mul(neg_grad, y.to(force.dtype)[:, None], out=scratch)
    force.mul_(x.to(force.dtype)[:, None]).add_(pull)
    return force, x, y


def layer_drift(
    force: Tensor, neg_grad: Tensor, radius: Tensor, layer_ids: Tensor, num_layers: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-layer drift (``ode_scope local``): §2.7 applied to each layer's slice.

    Plain per-layer norms and no ε inside ``r² - 1``, as the reference. Returns
    ``(δ, x [n, L], y [n, L])`` with ``δ`` written into ``force``.
    """
    f64 = torch.float64

    def per_layer(values: Tensor) -> Tensor:
        return segment_sum(values.to(f64), layer_ids, num_layers)

    gg = per_layer(neg_grad.square())
    ee = per_layer(force.square())
    ge = per_layer(neg_grad * force)
    x, y = _drift_coefficients(gg, ee, ge, radius[:, None], 0.0)
    xs, ys = x.to(force.dtype)[:, layer_ids], y.to(force.dtype)[:, layer_ids]
    force.mul_(xs).add_(neg_grad * ys)
    return force, x, y


# -- repulsion (spec §2.6, batched form) ----------------------------------------------------
def repulsion(
    masks: Tensor,
    *,
    mode: str,
    sqrt_numerator_weight: Tensor | None,
    normalizer_weight: Tensor | None,
    structured: bool,
    out: Tensor,
) -> tuple[Tensor, Tensor]:
    """All repulsive forces ``R_i = -∂K/∂m_i`` at once, and the kernel values ``K_i``.

    Spec §2.6, "Batched equivalent": one ``n×n`` Gram matrix and two ``n×P`` products
    instead of a loop over pairs and layers. ``S(v) = Σ a1 v²``; ``D_ij = Σ a2 (m_i - m_j)²``.

    * ``exp``, unstructured: ``W_ij = exp(-D_ij/Z_ij)/Z_ij``, ``Z_ij = sqrt(S_i S_j + 1e-12)``;
      structured (``structured=True``): ``Z_ij = S_j + 1e-12`` (the reference's normaliser).
      ``R = (2/n) a2 ⊙ (diag(W 1) M - W M)``, ``K_i = (1/n) Σ_j exp(-D_ij/Z_ij)``.
    * ``cos``: ``K_i = (1/n) Σ_j ⟨a1 m_i, m_j⟩ / Z_ij``, ``R = -(1/n) a1 ⊙ (Z^-1 M)`` (the
      self term included, as the reference).

    ``Z`` is treated as a constant (detached), as in the reference. ``D`` is computed from
    particles centred on their mean (``D`` is shift-invariant), which avoids the float32
    cancellation of ``q_i + q_j - 2 G_ij`` when particles are close.

    Args:
        masks: ``[n, P]`` snapshot of all particles.
        mode: ``"exp"`` or ``"cos"``.
        sqrt_numerator_weight: ``sqrt(a2)`` per entry (``|θ|`` unstructured, weighted), or
            None for 1.
        normalizer_weight: ``a1`` per entry (``|θ|``), or None for 1.
        structured: use the structured exp normaliser.
        out: ``[n, P]`` work buffer; receives ``R``.

    Returns:
        ``(R, K)`` with ``R`` = ``out`` (not multiplied by λ) and ``K`` of shape ``[n]``.
    """
    n = masks.shape[0]
    sq = torch.mul(masks, masks, out=out)
    if normalizer_weight is not None:
        sq.mul_(normalizer_weight)
    energy = sq.sum(1).double()  # S_i
    if mode == "cos":
        weighted = (
            torch.mul(masks, normalizer_weight, out=out) if normalizer_weight is not None else masks
        )
        gram = (weighted @ masks.T).to(torch.float64)
        inv_z = (energy[:, None] * energy[None, :] + EPS).rsqrt()
        kernel = (gram * inv_z).sum(1) / n
        torch.matmul(inv_z.to(masks.dtype), masks, out=out)
        out.mul_(-1.0 / n)
        if normalizer_weight is not None:
            out.mul_(normalizer_weight)
        return out, kernel
    if mode != "exp":
        raise ConfigError(f"repulsion={mode!r}; choose one of exp, cos, none")
    centred = torch.sub(masks, masks.mean(0, keepdim=True), out=out)
    if sqrt_numerator_weight is not None:
        centred.mul_(sqrt_numerator_weight)  # Y = a ⊙ (M - mean)
    gram = (centred @ centred.T).to(torch.float64)
    q = gram.diagonal()
    dist = (q[:, None] + q[None, :] - 2.0 * gram).clamp_min_(0.0).fill_diagonal_(0.0)
    if structured:
        z = (energy + EPS)[None, :].expand(n, n)
    else:
        z = (energy[:, None] * energy[None, :] + EPS).sqrt()
    expo = torch.exp(-dist / z)
    kernel = expo.sum(1) / n
    w = expo / z
    wy = w.to(masks.dtype) @ centred
    centred.mul_(w.sum(1).to(masks.dtype)[:, None]).sub_(wy)
    if sqrt_numerator_weight is not None:
        centred.mul_(sqrt_numerator_weight)  # a2 (M_i - M_j) = a ⊙ (Y_i - Y_j)
    return centred.mul_(2.0 / n), kernel


# -- diagnostics ----------------------------------------------------------------------------
def mean_distance(particles: Tensor, work: Tensor) -> float:
    """Mean Euclidean distance over particle pairs (0 for one particle)."""
    n = particles.shape[0]
    if n < 2:
        return 0.0
    centred = torch.sub(particles, particles.mean(0, keepdim=True), out=work)
    gram = (centred @ centred.T).double()
    q = gram.diagonal()
    dist = (q[:, None] + q[None, :] - 2 * gram).clamp_min(0).sqrt()
    return float(dist.sum() / (n * (n - 1)))
