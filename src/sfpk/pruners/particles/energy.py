"""The energy forces of one step: each particle's network pass (method spec §2.4, §3.1 step 3).

Per particle: its own batch, its mask polarised at its current size (:mod:`.processors`),
one forward + backward at the effective weights ``θ ⊙ b`` (:mod:`.batching`: one particle
at a time, or all at once through ``vmap``), and the straight-through force
``e = -(∂E/∂w_eff) ⊙ θ`` written into the particle's row of the forces. This is the only part
of a step that runs the network; the rest of it (:mod:`.engine`) is closed-form tensor
algebra on the particles.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ...errors import NonFiniteError
from ...masks.functional import LossFn
from ...training.distributed import all_reduce_rows_
from ...training.precision import autocast
from ..base import Batch, PruneContext, to_device
from ..threads import intra_op_threads
from .batching import iter_particle_grads, particle_grads
from .layout import FlatLayout
from .processors import ThresholdLayout, process

__all__ = ["EnergySystem", "check_finite_losses", "energy_forces"]

# A particle whose pass this rank runs: (index, its processor's gradient map or None, its
# polarised mask, its batch on the device).
_Work = tuple[int, Any, Tensor, tuple[Tensor, Tensor]]


class EnergySystem(Protocol):
    """What the energy pass reads from the engine, and the two things it writes.

    :class:`sfpk.pruners.particles.engine.ParticleSystem` has these attributes; declaring
    them here keeps this module below the engine (no import back into it). The pass writes
    the rows of ``forces`` and counts the batches it draws in ``consumed``.
    """

    model: nn.Module
    layout: FlatLayout
    options: Any
    ctx: PruneContext
    particles: Tensor
    forces: Tensor
    consumed: int
    owned: list[bool]
    layer_ode: bool
    rank_weight: Tensor | None
    thresholds: ThresholdLayout
    batching: str
    split: bool
    pass_threads: int


def energy_forces(
    system: EnergySystem, draws: Iterator[Batch], levels: list[list[float]], *, keep: bool
) -> tuple[Tensor, list[Tensor]]:
    """Write ``e_i = -∂E_i/∂m`` (straight-through) into ``system.forces`` row by row.

    Args:
        system: the engine whose particles move.
        draws: the batch stream; every particle draws one batch.
        levels: each particle's current size G (one value, or one per layer under the
            local ODE), the density its mask is polarised at.
        keep: also return each particle's polarised mask (for a trace).

    Returns:
        The energies ``E_i`` (float64, ``[n]``) and, with ``keep``, the polarised masks.

    Distributed: rows of particles other ranks own stay zero until the all-reduce; their
    batches are still drawn, so particle ``i`` gets the same batch on every world size.
    """
    opts, layout = system.options, system.layout
    losses = torch.zeros(opts.num_particles, dtype=torch.float64, device=layout.device)
    polarized = []
    work: list[_Work] = []
    for i in range(opts.num_particles):
        batch = next(draws)
        system.consumed += 1
        if not (system.owned[i] or keep):
            system.forces[i].zero_()
            continue
        density = levels[i] if system.layer_ode else levels[i][0]
        value, grad_fn = process(
            opts.processor,
            system.particles[i],
            system.rank_weight,
            density,
            system.thresholds,
            eps=opts.processor_eps,
            ratio=opts.processor_ratio,
        )
        if keep:
            polarized.append(value.detach().clone())
        if not system.owned[i]:
            system.forces[i].zero_()
            continue
        work.append((i, grad_fn, value, to_device(batch, system.ctx.device)))
    for (i, grad_fn, _, _), (loss, grads) in zip(work, _passes(system, work), strict=True):
        losses[i] = loss
        row = layout.mask_gradient_(grads, system.forces[i])
        if grad_fn is not None:
            row.copy_(grad_fn(row))
        row.neg_()
    if system.split:
        all_reduce_rows_(system.forces, losses)
    return losses, polarized


def _passes(system: EnergySystem, work: list[_Work]) -> Iterable[tuple[Tensor, dict[str, Tensor]]]:
    """Each working particle's loss and effective-weight gradients, in ``work``'s order.

    The loop runs lazily, so one particle's effective weights are in memory at a time; each
    forward+backward runs at ``ctx.precision`` and on ``system.pass_threads`` intra-op
    threads (the caller's, while the engine's own work around it may run on one).
    """
    ctx, layout = system.ctx, system.layout
    batches = [batch for *_, batch in work]
    loss_fn = functools.partial(_fp32_loss, ctx.loss_fn)
    each_pass = functools.partial(_pass_context, ctx, system.pass_threads)
    if system.batching == "loop":
        lazily = (layout.effective_weights(value) for _, _, value, _ in work)
        return iter_particle_grads(system.model, lazily, batches, loss_fn, each_pass=each_pass)
    effective = [layout.effective_weights(value) for _, _, value, _ in work]
    with each_pass():
        return particle_grads(system.model, effective, batches, loss_fn, "vmap")


@contextlib.contextmanager
def _pass_context(ctx: PruneContext, threads: int) -> Iterator[None]:
    """The network pass's precision (autocast) and intra-op thread count."""
    with intra_op_threads(threads), autocast(ctx.device, ctx.precision):
        yield


def _fp32_loss(loss_fn: LossFn, logits: Tensor, targets: Tensor) -> Tensor:
    """The energy loss in fp32 (the logits may come from a low-precision forward)."""
    return loss_fn(logits.float(), targets)


def check_finite_losses(losses: Tensor, step: int) -> None:
    """Stop at the first step whose energy is NaN or inf, naming the step and particles.

    Raises:
        NonFiniteError: a particle's energy is NaN or inf.
    """
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"step {step}: the energy (loss) of particle(s) {bad[:5]} is "
            f"{float(losses[bad[0]])}: NaN or inf in the pruning data's inputs or in the "
            "model's outputs"
        )
