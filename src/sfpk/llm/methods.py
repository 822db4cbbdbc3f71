"""The layer-wise methods: how one linear layer is pruned against its own inputs.

Every method sees one weight ``W [d_out, d_in]`` and the :class:`~sfpk.llm.stats.InputStats`
of that layer's calibration inputs, and returns the new weight and its keep mask:

* ``mag``: keep the largest ``|W_ij|`` of every row (no data).
* ``wanda`` (Sun et al. 2024, eq. 1): score ``|W_ij| · ‖X_j‖₂``, per output row.
* ``sparsegpt`` (Frantar & Alistarh 2023): :func:`sfpk.llm.sparsegpt.sparsegpt`.
* ``spode`` / ``sfpk``: the particle dynamics on the layer's reconstruction energy
  (:mod:`sfpk.llm.particles`), then optionally SparseGPT's OBS update of the kept weights
  with the voted mask fixed (``update_weights``, default on).

Selection is per output row, or per N:M group (:mod:`sfpk.llm.select`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, bounds, check_fields
from .particles import ParticleOptions, particle_scores
from .select import keep_mask
from .sparsegpt import sparsegpt
from .stats import InputStats

__all__ = [
    "METHODS",
    "GRAM_METHODS",
    "SparseGPTOptions",
    "method_options",
    "prune_layer",
]

METHODS: tuple[str, ...] = ("mag", "wanda", "sparsegpt", "spode", "sfpk")
GRAM_METHODS = frozenset({"sparsegpt", "spode", "sfpk"})  # they need H = XᵀX / T


@dataclass(frozen=True)
class SparseGPTOptions:
    """SparseGPT's settings.

    Attributes:
        block_size: columns per lazy-update block (the paper's 128).
        damping: dampening added to the Hessian diagonal, a fraction of its mean (1 %).
    """

    block_size: int = dataclasses.field(default=128, metadata=bounds(ge=1))
    damping: float = dataclasses.field(default=0.01, metadata=bounds(gt=0))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class _NoOptions:
    """mag and wanda take no options."""


_OPTIONS: dict[str, type] = {
    "mag": _NoOptions,
    "wanda": _NoOptions,
    "sparsegpt": SparseGPTOptions,
    "spode": ParticleOptions,
    "sfpk": ParticleOptions,
}


def method_options(method: str, options: Mapping[str, Any] | None) -> Any:
    """The options object of ``method`` from a mapping of keyword values.

    SpODE is SFPK with one particle and no repulsion: ``spode`` fixes ``num_particles=1``
    and ``repulsion_weight=0`` and refuses other values for them.

    Raises:
        ConfigError: an option the method does not take (the message lists the ones it
            takes), or a value of the wrong type or out of range.
    """
    cls = _OPTIONS[method]
    given = dict(options or {})
    allowed = [f.name for f in dataclasses.fields(cls)]
    if method == "spode":
        allowed = [n for n in allowed if n not in ("num_particles", "repulsion_weight")]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"method {method!r} takes no option {', '.join(map(repr, unknown))}; it takes: "
            f"{', '.join(allowed) or 'none'}"
        )
    if method == "spode":
        given.update(num_particles=1, repulsion_weight=0.0)
    return cls(**given)


def _wanda_scores(weight: Tensor, stats: InputStats) -> Tensor:
    # Wanda (Sun et al. 2024), eq. 1: S_ij = |W_ij| · ||X_j||_2 over all calibration tokens.
    return weight.abs() * stats.sq_norms.to(weight.dtype).sqrt()[None, :]


@torch.no_grad()
def prune_layer(
    method: str,
    weight: Tensor,
    stats: InputStats,
    *,
    sparsity: float,
    nm: tuple[int, int] | None,
    options: Any,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """``(new weight, keep mask)`` of one linear layer under ``method``.

    ``weight`` is not modified; the new weight has its pruned entries exactly zero.
    """
    w = weight.detach()
    if method in ("mag", "wanda"):
        scores = w.abs() if method == "mag" else _wanda_scores(w.float(), stats)
        keep = keep_mask(scores.float(), sparsity, nm).to(w.dtype)
        return w * keep, keep
    if method == "sparsegpt":
        return sparsegpt(
            w, stats.hessian(), sparsity=sparsity, nm=nm,
            block_size=options.block_size, damping=options.damping,
        )  # fmt: skip
    if method in ("spode", "sfpk"):
        hessian = stats.hessian()
        scores, magnitude = particle_scores(
            w, hessian, sparsity=sparsity, nm=nm, options=options, generator=generator
        )
        if options.selection == "adaptive":
            # The voted mask value per weight, m̄ = S / θ (tempered), steers SparseGPT's selection.
            prior = (scores / magnitude.clamp_min(1e-30)).pow(options.prior_power)
            return sparsegpt(
                w, hessian, sparsity=sparsity, nm=nm, prior=prior,
                block_size=options.block_size, damping=options.damping,
            )  # fmt: skip
        keep = keep_mask(scores, sparsity, nm)
        if not options.update_weights:
            keep = keep.to(w.dtype)
            return w * keep, keep
        return sparsegpt(
            w, hessian, sparsity=sparsity, mask=keep,
            block_size=options.block_size, damping=options.damping,
        )  # fmt: skip
    raise ConfigError(f"method={method!r}; choose one of {', '.join(METHODS)}")
