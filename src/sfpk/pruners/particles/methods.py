"""SFPK and SpODE: probabilistic pruning with interacting mask particles (docs/sfpk.md).

``sfpk`` (Stein / Fokker-Planck particles, ICLR 2025) drives ``n`` continuous masks from the
dense network to the target density in ``N`` steps; each step every particle takes the
closed-form drift that lowers its mask size G by ``dt`` while lowering its polarised energy
most, pushed apart by a kernel repulsion. The voted particle scores (with momentum) give the
final mask by an exact top-k. ``spode`` (ICML 2023) is the same engine with one particle and
no repulsion. The method is specified in ``docs/sfpk-method.md``; our decisions (section 9
there) are listed in ``docs/sfpk.md``.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ...errors import ConfigError, check_choice, check_positive
from ...masks.core import Masks, Scope
from ...selection.topk import select_topk
from ..base import PruneContext, PruneObserver, Pruner, PruneResult, StartState, register
from .dynamics import DT_SCHEDULES, RADIUS_SCHEDULES, dt_schedule, parse_size_functional
from .engine import ParticleSystem
from .layout import FlatLayout
from .processors import PROCESSORS
from .voting import SCORES, VOTES

__all__ = ["SfpkPruner", "SpodePruner", "ParticleOptions"]

_REPULSIONS = ("exp", "cos", "none")


@dataclass(frozen=True)
class _DynamicsOptions:
    """Args:
    num_steps: N, steps per pruning call (spec §2.3).
    radius_ratio: r > 1, the step radius relative to the minimum-norm step (§2.7).
    size_functional: G: "l2" (default), "l1" or "l<p>" (§2.2).
    dt_schedule: "exp" (geometric), "lin", "invexp" or "adalin" (§2.3); the reference's
        hess/hessexp/adaExp are broken (§8.16) and rejected.
    radius_schedule: r_t: "fix", "invexp" or "hess" (per-particle calibration); auto/autor
        are rejected (§8.16).
    momentum: μ in S ← s̄ + μ S (§2.10).
    processor: polarisation inside the energy: ohh (hard, straight-through), ohhm, oh, ohm,
        qt, qtm, gau, gaum (§2.5).
    processor_eps, processor_ratio: qt/gau sigmoid calibration (§2.5).
    score: particle score: "mp" |m θ|, "m" |m|, "mpz" |m|(|θ|+1e-4) (§2.10).
    rank_by_weight: polarisation ranks by |m θ| (the reference's mxp) instead of |m|.
    ode_scope: "global" (one G and drift) or "local" (per-layer G, drift, dt and thresholds).
    early_stop: stop once the mean pre-step G is at or below the target (§2.11).
    train_mode: simulate in train mode (BatchNorm batch statistics, dropout on), as §3.2.
    reference_local_polarization: under local thresholds a layer with k_l ≤ 1 keeps its
        continuous mask (the reference, golden README note 1); False: only k_l < 1 does,
        as in the global rule.
    reference_batch_order: each draw is the first batch of a fresh iterator over the data
        (reference SpODE) instead of one persistent cyclic stream.
    start_one: start the dt schedule at 1.0 (reference SpODE) instead of G of the start mask.
    revive_pruned: entries already zero in the starting masks may come back (reference
        §2.13); False keeps masks nested across rounds (§9.5) and simulates with
        ``θ ⊙ 1[mask ≠ 0]``, as if the starting masks were applied to the model.

    Continuing from a previous round, resuming, checkpoints and tracing are not options:
    they are the ``start`` and ``observer`` arguments of :meth:`Pruner.prune`.
    """

    num_steps: int = 100
    radius_ratio: float = 1.4
    size_functional: str = "l2"
    dt_schedule: str = "exp"
    radius_schedule: str = "fix"
    momentum: float = 0.1
    processor: str = "ohh"
    processor_eps: float = 0.9
    processor_ratio: float = 0.9
    score: str = "mp"
    rank_by_weight: bool = True
    ode_scope: Literal["global", "local"] = "global"
    early_stop: bool = True
    train_mode: bool = True
    reference_local_polarization: bool = False
    reference_batch_order: bool = False
    start_one: bool = False
    revive_pruned: bool = False

    def __post_init__(self) -> None:
        check_positive("num_steps", self.num_steps)
        if not self.radius_ratio > 1.0:
            raise ConfigError(f"radius_ratio={self.radius_ratio!r} must be > 1")
        parse_size_functional(self.size_functional)
        if self.dt_schedule not in DT_SCHEDULES:
            one = torch.ones(1, dtype=torch.float64)
            dt_schedule(self.dt_schedule, 0, 1, one, one, one)  # raises the precise error
        check_choice("radius_schedule", self.radius_schedule, RADIUS_SCHEDULES)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_choice("processor", self.processor, PROCESSORS)
        for name in ("processor_eps", "processor_ratio"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in (0, 1)")
        if self.processor_eps <= 0.5:
            raise ConfigError(f"processor_eps={self.processor_eps!r} must be > 0.5")
        check_choice("score", self.score, SCORES)
        check_choice("ode_scope", self.ode_scope, ("global", "local"))


@dataclass(frozen=True)
class ParticleOptions(_DynamicsOptions):
    """Options of ``sfpk`` (method spec §9.1 defaults: the paper's README recipe).

    Args:
        num_particles: n, particles; each draws its own mini-batch every step.
        repulsion: kernel: "exp" (default), "cos" or "none" (§2.6).
        repulsion_weight: λ ≥ 0, the repulsion strength (0 switches it off).
        weighted_kernel: weight the kernel by |θ| (the reference always does).
        vote: "soft" (mean of the voters' scores) or "hard" (cut at the target first).
        vote_ratio: fraction of lowest-energy particles that vote (0 or 1: all).
        (See the base class for the dynamics options.)
    """

    num_particles: int = 10
    repulsion: str = "exp"
    repulsion_weight: float = 0.2
    weighted_kernel: bool = True
    vote: str = "soft"
    vote_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("num_particles", self.num_particles)
        check_choice("repulsion", self.repulsion, _REPULSIONS)
        check_positive("repulsion_weight", self.repulsion_weight, allow_zero=True)
        check_choice("vote", self.vote, VOTES)
        if not 0.0 <= self.vote_ratio <= 1.0:
            raise ConfigError(f"vote_ratio={self.vote_ratio!r} must be in [0, 1]")


class _ParticlePruner(Pruner):
    """Shared ``prune`` of the particle methods: simulate, then exact top-k of S (§2.12)."""

    @abc.abstractmethod
    def engine_options(self) -> ParticleOptions:
        """The full engine options for this method."""

    def prune(
        self,
        model: nn.Module,
        data: Any,
        masks: Masks,
        *,
        sparsity: float,
        scope: Scope,
        ctx: PruneContext,
        start: StartState | None = None,
        observer: PruneObserver | None = None,
    ) -> PruneResult:
        """Run the particle system to ``1 - sparsity`` and select the top-k of its score.

        ``start`` continues from a previous call's final state (its particles and S carry
        over, §2.13) or resumes an interrupted call; the result's ``state`` is the final
        engine state and its ``history`` one record per step.
        """
        opts = self.engine_options()
        observer = observer or PruneObserver()
        layout = FlatLayout(model, masks, mask_weights=not opts.revive_pruned)
        engine = ParticleSystem(model, layout, opts, density=1.0 - sparsity, scope=scope, ctx=ctx)
        if start is None:
            engine.init_from_masks(dict(masks))
        elif start.resume:
            engine.load_state_dict(start.state)
        else:
            engine.continue_from(start.state)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model.train(opts.train_mode)
        try:
            for p in model.parameters():
                p.requires_grad_(False)  # θ is frozen; only w_eff leaves get gradients
            scores = engine.run(data, observer)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        final = layout.entry_scores(scores * layout.alive)  # S ⊙ 1[θ ≠ 0] (§2.12)
        result = select_topk(
            final,
            masks,
            sparsity=sparsity,
            scope=scope,
            keep_pruned=not opts.revive_pruned,
            guard=ctx.collapse_guard,
            round_to=ctx.round_to,  # the simulation's thresholds stay unrounded
        )
        return PruneResult(result, history=list(engine.history), state=engine.state_dict())


@register
class SfpkPruner(_ParticlePruner):
    """SFPK: n interacting mask particles with kernel repulsion and score voting."""

    name = "sfpk"
    Options = ParticleOptions

    def engine_options(self) -> ParticleOptions:  # noqa: D102
        return self.options


@register
class SpodePruner(_ParticlePruner):
    """SpODE: the sparsity-indexed ODE, i.e. SFPK with one particle and no repulsion."""

    name = "spode"

    @dataclass(frozen=True)
    class Options(_DynamicsOptions):
        """SpODE options: those of sfpk's dynamics (see ``ParticleOptions``), with the
        reference SpODE's choice of no early stop. ``reference_batch_order=True`` and
        ``start_one=True`` reproduce the reference SpODE exactly (golden case C)."""

        early_stop: bool = False

    def engine_options(self) -> ParticleOptions:  # noqa: D102
        fields = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        return ParticleOptions(
            **fields,
            num_particles=1,
            repulsion="none",
            repulsion_weight=0.0,
            vote="soft",
            vote_ratio=1.0,
        )
