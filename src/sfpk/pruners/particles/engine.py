"""The interacting mask-particle engine shared by SFPK and SpODE (method spec §2, §3.1).

One :class:`ParticleSystem` runs ``N`` synchronous steps of ``n`` particles. Its state lives
in pre-allocated flat tensors: particles ``[n, P_m]``, forces ``[n, P_m]``, ``-∇G``
``[n, P_m]``, one ``[n, P_m]`` work buffer and the score accumulator ``S`` ``[P_m]``. Per
particle and step there is exactly one forward + backward pass (:mod:`.energy`, through the
functional masked forward :func:`sfpk.masks.functional.effective_weight_grads`); G, the repulsion,
the drift and the votes are closed-form tensor operations (:mod:`.dynamics`,
:mod:`.processors`, :mod:`.voting`).

BatchNorm: the network runs in train mode throughout (spec §3.2), so BN normalises with the
statistics of each particle's own mini-batch; the running statistics drift and are restored
by :func:`sfpk.prune` (recalibrate them after applying the masks, :func:`sfpk.recalibrate_bn`).

Distributed (``torchrun``, :mod:`sfpk.training.distributed`): every rank holds the full replicated
state and draws every batch in the same order, but runs the forward+backward only of the
particles it owns (round-robin); one SUM all-reduce of the forces and energies per step
(other rows are exact zeros) makes every rank's state equal to the single-process run, and
the rest of the step runs identically everywhere. Checkpoint callbacks fire on rank 0 only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...errors import NonFiniteError, SfpkError
from ...training.distributed import is_main, particle_owner, rank, world_size
from ...training.distributed import resolve_distributed as _resolve_distributed
from ..base import Batch, PruneContext, PruneObserver, batch_stream
from ..threads import intra_op_threads
from .batching import resolve_batching
from .dynamics import (
    drift,
    dt_schedule,
    layer_drift,
    layer_size_and_gradient,
    mean_distance,
    parse_size_functional,
    radius_at,
    repulsion,
    size_and_gradient,
)
from .energy import check_finite_losses, energy_forces
from .layout import FlatLayout
from .processors import ThresholdLayout
from .state import STATE_VERSION, capture_state, check_state, restore_rng, restore_state
from .voting import rank_voters, score_weight, vote

__all__ = ["ParticleSystem", "STATE_VERSION"]

Trace = Callable[[dict[str, Any]], None]


class ParticleSystem:
    """n mask particles driven from their start density to ``density`` in ``N`` steps.

    Args:
        model: the network (its weights are read, never written).
        layout: the flat layout of the masks being pruned.
        options: a :class:`sfpk.pruners.particles.SfpkPruner.Options` (SpODE maps its own).
        density: final target density ``ρ`` (fraction of weights kept).
        scope: ``"global"`` or ``"local"`` (per-layer targets, dt and thresholds, spec §2.3).
        ctx: the pruning context (device, loss, progress).

    Example:
        >>> system = ParticleSystem(model, layout, options, density=0.1, scope="global",
        ...                         ctx=PruneContext())  # doctest: +SKIP
        >>> scores = system.run(loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        layout: FlatLayout,
        options: Any,
        *,
        density: float,
        scope: str,
        ctx: PruneContext,
    ) -> None:
        self.model, self.layout, self.options, self.ctx = model, layout, options, ctx
        self.density = density
        opts = options
        n, size = opts.num_particles, layout.num_entries
        buffer = dict(dtype=layout.dtype, device=layout.device)
        self.particles = torch.ones((n, size), **buffer)
        self.forces = torch.empty((n, size), **buffer)
        self.neg_grads = torch.empty((n, size), **buffer)
        self.work = torch.empty((n, size), **buffer)
        self.scores = torch.zeros(size, **buffer)
        self.functional = parse_size_functional(opts.size_functional)
        self.layer_ode = opts.ode_scope == "local"
        self.per_layer = scope == "local" or self.layer_ode
        levels = layout.num_layers if self.per_layer else 1
        self.end = torch.full((levels,), float(density), dtype=torch.float64)
        self.start = self.end.clone()
        self.dropped = torch.zeros_like(self.end)  # Σ dt so far: the scheduled drop of G
        self.step_index, self.consumed, self.stopped = 0, 0, False
        self.calibration = torch.full((n,), math.nan, dtype=torch.float64, device=layout.device)
        self.history: list[dict[str, Any]] = []
        segments = layout.segments if self.per_layer else None
        weighted = layout.entry_weight if (layout.structured and segments is None) else None
        self.thresholds = ThresholdLayout(
            segments, weighted, layout.total_weights, opts.reference_local_polarization
        )
        # The hard vote cuts at the final target, so per layer only under local *scope*.
        final_segments = layout.segments if scope == "local" else None
        self.vote_layout = ThresholdLayout(
            final_segments,
            layout.entry_weight if (layout.structured and final_segments is None) else None,
            layout.total_weights,
        )
        if layout.nm is not None:  # the pattern holds per tensor, whatever the scope
            self.vote_layout = ThresholdLayout(
                layout.segments, nm_group=layout.nm[1], shapes=tuple(layout.shapes)
            )
        self.rank_weight = layout.abs_theta if opts.rank_by_weight else None
        self.score_weight = score_weight(opts.score, layout.abs_theta, layout.entry_weight)
        kernel_weight = opts.weighted_kernel
        entry = layout.entry_weight
        self.kernel_root = layout.sq_theta_root if kernel_weight else _sqrt_or_none(entry)
        self.kernel_norm = layout.abs_theta if kernel_weight else entry
        self.batching = resolve_batching(ctx.particle_batching, layout.device)
        self.split = _resolve_distributed(ctx.distributed)
        world, me = (world_size(), rank()) if self.split else (1, 0)
        self.owned = [particle_owner(i, world) == me for i in range(n)]
        # Intra-op threads of the network passes: the caller's, set at each step (below).
        self.pass_threads = torch.get_num_threads()

    # -- initial state ----------------------------------------------------------------------
    def init_from_masks(self, masks: dict[str, Tensor]) -> None:
        """Every particle starts as a copy of ``masks``; ``start`` = G of particle 0 (§3.1)."""
        self.particles.copy_(self.layout.flatten(masks).expand_as(self.particles))
        if self.options.start_one:
            self.start.fill_(1.0)
        else:
            self.start.copy_(self._levels(self.particles[:1])[0].to(torch.float64))

    def continue_from(self, state: dict[str, Any]) -> None:
        """Iterative continuation (spec §2.13): particles and S carry over, start = mean G."""
        check_state(self, state)
        self.particles.copy_(state["particles"])
        self.scores.copy_(state["score"])
        self.start.copy_(self._levels(self.particles).mean(0).to(torch.float64))

    def _levels(
        self, particles: Tensor, per_layer: bool | None = None, out: Tensor | None = None
    ) -> Tensor:
        """Per-particle G: ``[k, 1]`` globally or ``[k, L]`` per layer (default: per layer
        under either local scope); ``out`` receives ``-∇G`` when given."""
        layout = self.layout
        if not (self.per_layer if per_layer is None else per_layer):
            value, _ = size_and_gradient(
                particles,
                self.functional,
                total=layout.total_weights,
                weights=layout.entry_weight,
                out=out,
            )
            return value[:, None]
        value, _ = layer_size_and_gradient(
            particles,
            self.functional,
            layer_ids=layout.layer_ids,
            layer_totals=layout.layer_totals,
            weights=layout.entry_weight,
            out=out,
        )
        return value

    # -- state (checkpoint handling lives in .engine_state) --------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors are copies)."""
        return capture_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume a run from :meth:`state_dict` (same options, data, masks and scope)."""
        restore_state(self, state)
        self._rng = state["rng"]

    # -- the simulation ---------------------------------------------------------------------
    def _draws(self, data: Iterable[Batch]) -> Iterator[Batch]:
        """Batches for the particles: one persistent cyclic stream (SFPK), or the first
        batch of a fresh iterator per draw (``reference_batch_order``, reference SpODE)."""
        if self.options.reference_batch_order:
            while True:
                first = list(islice(iter(data), 1))
                if not first:
                    raise SfpkError("the pruning data yielded no batch")
                yield first[0]
        yield from batch_stream(data)

    def run(self, data: Iterable[Batch], observer: PruneObserver | None = None) -> Tensor:
        """Run the remaining steps; returns the momentum score ``S`` (flat, ``[P_m]``).

        ``observer`` (optional) shows progress, receives each step's record and trace, and
        every ``checkpoint_every`` steps a :meth:`state_dict` (on rank 0 only when split).
        """
        opts = self.options
        observer = observer or PruneObserver()
        draws = self._draws(data)
        for _ in range(self.consumed):  # resume: replay the draws already used, then ...
            next(draws)
        rng = getattr(self, "_rng", None)
        if rng is not None:  # ... restore the RNG, which the replay may itself have used
            restore_rng(rng, self.layout.device)
        bar = tqdm(
            total=opts.num_steps,
            initial=self.step_index,
            disable=not observer.progress,
            desc=f"{opts.num_particles} particles",
            leave=False,
        )
        try:
            while self.step_index < opts.num_steps and not self.stopped:
                record = self.step(draws, observer.trace)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", dist=f"{record['distance']:.3g}")
                if observer.on_step is not None:
                    observer.on_step(record)
                every = observer.checkpoint_every
                due = every and self.step_index % every == 0 and (is_main() or not self.split)
                if due and observer.on_checkpoint is not None:
                    observer.on_checkpoint(self.state_dict())
        finally:
            bar.close()
        if not bool(torch.isfinite(self.scores).all()):
            raise NonFiniteError(
                f"the particle score S holds NaN or inf after step {self.step_index}: the "
                "dynamics diverged (check radius_ratio, momentum and the model's weights)"
            )
        return self.scores

    def step(self, draws: Iterator[Batch], trace: Trace | None = None) -> dict[str, Any]:
        """One synchronous step of all particles (spec §3.1 loop body).

        On the CPU the step's own vector work runs on one intra-op thread and the network
        passes on the caller's count (:mod:`sfpk.pruners.threads` says why); the caller's count is
        restored when the step returns or raises.
        """
        if self.layout.device.type != "cpu":
            self.pass_threads = torch.get_num_threads()
            return self._step(draws, trace)
        with intra_op_threads(1) as caller:
            self.pass_threads = caller
            return self._step(draws, trace)

    def _step(self, draws: Iterator[Batch], trace: Trace | None) -> dict[str, Any]:
        opts, t = self.options, self.step_index
        tic = time.perf_counter()
        levels = self._levels(self.particles, self.layer_ode, out=self.neg_grads)  # and -∇G
        level_list = levels.tolist()
        dt = self._dt(t)
        info: dict[str, Any] | None = None
        if trace is not None:
            info = {"mask_before": self.particles.clone()}
        losses, polarized = energy_forces(self, draws, level_list, keep=info is not None)
        check_finite_losses(losses, t)
        if info is not None:
            info["force_energy"] = self.forces.clone()
        attraction = float(self.forces.norm(dim=1).mean())
        push, kernel = self._repel(info)
        if info is not None:
            info["force_total"] = self.forces.clone()
        radius = self._move(t, dt)
        if info is not None:
            info.update(
                step=t, dt=dt.tolist(), start=self.start.tolist(), end=self.end.tolist(),
                G=levels.clone(), E=losses.clone(), K=kernel, radius=radius.clone(),
                polarized=polarized, neg_grad=self.neg_grads.clone(),
                delta=self.forces.clone(), mask_after=self.particles.clone(),
            )  # fmt: skip
        voted = self._vote(losses, info)
        self.scores.mul_(opts.momentum).add_(voted)
        self.step_index += 1
        mean_level = sum(map(sum, level_list)) / (len(level_list) * len(level_list[0]))
        if opts.early_stop and mean_level <= float(self.end.mean()):
            self.stopped = True
        self.dropped += dt
        record = {
            "step": t,
            "target_density": float((self.start - self.dropped).mean()),
            "mean_G": mean_level,
            "loss": float(losses.mean()),
            "distance": mean_distance(self.particles, self.work),
            "repulsion": push,
            "attraction": attraction,
            "seconds": time.perf_counter() - tic,
        }
        self.history.append(record)
        if info is not None:
            info.update(voted=voted.clone(), momentum=self.scores.clone(), record=record)
            trace(info)
        return record

    def _dt(self, t: int) -> Tensor:
        """``dt_t`` (float64 on the CPU, one value or one per layer) of the schedule."""
        opts = self.options
        current = None
        if opts.dt_schedule == "adalin":
            current = self._levels(self.particles).mean(0).double().cpu()
        return dt_schedule(opts.dt_schedule, t, opts.num_steps, self.start, self.end, current)

    def _move(self, t: int, dt: Tensor) -> Tensor:
        """Turn the forces into the drift δ (§2.7) and take ``M += dt·δ``; returns r_t."""
        opts, layout = self.options, self.layout
        # Only "hess" reads the force norms; the other schedules need just their shape.
        hess = opts.radius_schedule == "hess"
        norms = self.forces.norm(dim=1) if hess else self.calibration
        radius = radius_at(
            opts.radius_schedule, t, opts.num_steps, opts.radius_ratio, norms, self.calibration
        )
        if self.layer_ode:
            layer_drift(self.forces, self.neg_grads, radius, layout.layer_ids, layout.num_layers)
        else:
            drift(self.forces, self.neg_grads, radius, scratch=self.work)
        if dt.numel() == 1:
            self.particles.add_(self.forces, alpha=float(dt))
        else:
            self.particles.addcmul_(
                self.forces, dt.to(layout.dtype).to(layout.device)[layout.layer_ids]
            )
        return radius

    def _vote(self, losses: Tensor, info: dict[str, Any] | None) -> Tensor:
        """The voted score s̄ of the lowest-energy particles (§2.10 steps 1-4)."""
        opts = self.options
        order, voters = rank_voters(losses, opts.vote_ratio)
        voter_list = voters.tolist()
        votes: dict[str, dict[int, Tensor]] | None = {} if info is not None else None
        voted = vote(
            self.particles,
            voter_list,
            mode=opts.vote,
            weight=self.score_weight,
            density=self.density,
            layout=self.vote_layout,
            alive=self.layout.alive,
            trace=votes,
        )
        if info is not None:
            info.update(
                order=order.tolist(),
                voters=voter_list,
                scores_raw=votes.get("raw", {}),
                scores_voted=votes.get("voted", {}),
            )
        return voted

    def _repel(self, info: dict[str, Any] | None) -> tuple[float, Tensor | None]:
        """Add ``λ R`` (all particles at once) to the forces; returns (mean ‖λR‖, K)."""
        opts = self.options
        if opts.repulsion == "none" or opts.repulsion_weight == 0.0:
            return 0.0, None
        rep, kernel = repulsion(
            self.particles,
            mode=opts.repulsion,
            sqrt_numerator_weight=self.kernel_root,
            normalizer_weight=self.kernel_norm,
            structured=self.layout.structured,
            out=self.work,
        )
        if info is not None:
            info["force_repulsion"] = rep.clone()
        self.forces.add_(rep, alpha=opts.repulsion_weight)
        return opts.repulsion_weight * float(rep.norm(dim=1).mean()), kernel


def _sqrt_or_none(values: Tensor | None) -> Tensor | None:
    return values.sqrt() if values is not None else None
