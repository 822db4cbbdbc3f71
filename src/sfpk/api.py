"""The pruning API: ``sfpk.prune(...) -> Masks`` and ``sfpk.run_pruner(...) -> PruneResult``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import check_choice
from .masks.core import Masks, Scope
from .masks.prunable import Structure
from .model_state import ModelState
from .prune_args import (
    SEED_MAX,
    check_finite_tensors,
    check_first_batch,
    check_model,
    check_seed,
    checked_call,
)
from .pruners.base import Batch, PruneContext, PruneObserver, PruneResult, StartState
from .pruners.particles.batching import BATCHINGS
from .selection.aligned import is_aligned
from .selection.collapse import Guard
from .selection.topk import check_achieved_sparsity
from .training.precision import check_precision

__all__ = [
    "prune",
    "run_pruner",
    "check_pruning",
    # the argument checks, kept importable from here (sfpk.prune_args holds them)
    "SEED_MAX",
    "check_model",
    "check_seed",
    "check_finite_tensors",
]


log = logging.getLogger(__name__)


def prune(
    model: nn.Module,
    data: Iterable[Batch] | None,
    *,
    method: str,
    sparsity: float,
    scope: Scope | None = None,
    structure: Structure | None = None,
    seed: int = 0,
    masks: Masks | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_bias: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = False,
    collapse_guard: Guard = "row",
    protect_output: bool = True,
    round_to: int | None = None,
    particle_batching: str = "auto",
    precision: str = "fp32",
    **options: Any,
) -> Masks:
    """Prune ``model`` to ``sparsity`` with ``method`` and return the masks.

    The model is left as it was (weights, BatchNorm statistics, train/eval mode): apply the
    result with ``masks.apply(model)`` and, for BN models, ``sfpk.recalibrate_bn``.
    :func:`run_pruner` takes the same arguments and returns the full result (per-step
    history, the state to continue from).

    Args:
        model: any ``nn.Module`` made of standard layers; its conv and linear weights are
            pruned (see :func:`sfpk.prunable_parameters` and ``include``/``exclude``).
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list). Data-free
            methods (rand, mag, synflow) need only one batch, for the input shape. The
            other methods first run the model and the loss once on the first batch (one
            forward without gradients; a list's or DataLoader's before any work, an
            iterator's at the method's first read), so data that does not fit the model
            or the loss is one clear error (:func:`sfpk.prune_args.check_first_batch`).
        method: one of :func:`sfpk.methods` (rand, mag, snip, grasp, synflow, wanda, spode,
            sfpk).
        sparsity: fraction of prunable weights removed, in (0, 1); 0.95 keeps 5 %.
        scope: ``"global"`` (one ranking over all layers), ``"local"`` (each layer alone) or
            ``"row"`` (each output row alone; unstructured only). None: the method's
            default, ``"global"`` for all but wanda, which compares within rows as its
            paper does (globally for structured masks).
        structure: None or ``"unstructured"``, ``"filter"`` (output filters/neurons),
            ``"head"`` / ``"neuron"`` / ``"head+neuron"`` (transformer attention heads and MLP
            neurons, each removed from every tensor it spans; :mod:`sfpk.masks.groups`) or
            ``"channel"`` (input channels/features).
        seed: seeds every random choice of this call (the caller's RNG state is restored).
        masks: starting masks (iterative pruning); entries already pruned stay pruned.
            Their ``round_to`` is the default of ``round_to``.
        include, exclude, include_bias: choose the prunable parameters.
        loss_fn: the loss for data-driven methods, ``loss_fn(logits, targets) -> scalar``;
            None: mean cross-entropy over dimension 1 (classification). It is never
            inferred: a language model (``[B, T, V]`` logits for ``[B, T]`` token targets)
            needs ``loss_fn=sfpk.losses.next_token_loss``, with targets already shifted by
            one token, and is refused without it, since sfpk cannot tell shifted targets
            from unshifted ones and a guess would silently change the objective.
        progress: show a progress bar for long methods.
        collapse_guard: keep at least one weight per output row (``"row"``, default), per
            layer (``"layer"``) or none (``"off"``) in unstructured global/local cuts, so
            extreme sparsity never disconnects a layer; counts stay exact, and what it did
            is in the masks' ``collapse_guard`` (:mod:`sfpk.selection.collapse`).
        protect_output: with ``structure="filter"``, leave the layers that produce the
            model's output unpruned: their filters are the outputs themselves (a
            classifier's classes). Found from one input of ``data``, or declared by the model
            as ``sfpk_output_layers`` (:mod:`sfpk.masks.output_layers`); listed in the result's
            ``unpruned_outputs``. False prunes them as the reference implementation does.
            It shapes fresh masks only: starting ``masks`` keep their own parameters.
        round_to: with ``structure`` ``"filter"``, ``"channel"`` or ``"coupled"``, every
            block (a layer's filters or channels; a coupled channel group) keeps a multiple
            of ``round_to`` of them, at least ``round_to``, or all of them (a block of at
            most ``round_to`` is never shrunk): slim widths then fill the CPU kernels'
            channel blocks (16 fp32 channels with AVX-512, 8 with AVX2;
            ``docs/performance.md``). ``local`` rounds each block's count to the nearest
            such width; ``global`` removes whole chunks of ``round_to`` groups, within one
            chunk of the requested sparsity (:mod:`sfpk.selection.aligned`). A sparsity the
            rounding cannot come near is an error, before any work (the reach rule of
            :mod:`sfpk.selection.aligned`; SynFlow's inner rounds at lower targets only round).
            None: the starting ``masks``' ``round_to`` (a divisor of it is accepted too),
            else no rounding (as 1). With ``include_bias`` a layer's bias
            follows its filters. SFPK/SpODE simulate as without it; only the final
            selection rounds.
        particle_batching: SFPK/SpODE's n forward+backward passes one per particle
            (``"loop"``), in one vmapped pass (``"vmap"``), or ``"auto"`` (vmap on GPUs, the
            loop on CPU); the results agree to fp32 tolerance.
        precision: the forward passes in ``"fp32"``, ``"bf16"`` or ``"fp16"`` (GPU only)
            autocast (:mod:`sfpk.training.precision`); scores, particles and masks stay fp32.
        **options: the method's hyperparameters (``sfpk.pruner_class(method).Options``).

    Returns:
        0/1 :class:`Masks` whose achieved sparsity has been checked, globally and per layer.

    Raises:
        UnknownNameError: unknown method, scope or structure.
        ConfigError: sparsity outside (0, 1), an unknown option, a bad option value, a
            ``structure`` that differs from the starting ``masks``', a ``round_to`` that is
            not a whole number >= 1, comes with another structure or does not keep the
            starting masks' one (1, or not a divisor of it), or a ``round_to`` cut that
            cannot reach ``sparsity`` (the message gives the highest sparsity the scope
            accepts).
        DataMismatchError: the first batch does not fit the model (its forward fails) or
            the loss (it fails, does not reduce to a scalar, integer targets outside
            ``[0, C)``, or a language model's output under the default loss); the message
            gives the batch's shapes and dtypes, the model's output shape and the argument
            to change, with the PyTorch error as its cause.

    Example:
        >>> masks = sfpk.prune(model, loader, method="sfpk", sparsity=0.9)  # doctest: +SKIP
        >>> masks.apply(model)  # doctest: +SKIP
    """
    return run_pruner(
        model,
        data,
        method=method,
        sparsity=sparsity,
        scope=scope,
        structure=structure,
        seed=seed,
        masks=masks,
        include=include,
        exclude=exclude,
        include_bias=include_bias,
        loss_fn=loss_fn,
        observer=PruneObserver(progress=progress),
        collapse_guard=collapse_guard,
        protect_output=protect_output,
        round_to=round_to,
        particle_batching=particle_batching,
        precision=precision,
        **options,
    ).masks


def run_pruner(
    model: nn.Module,
    data: Iterable[Batch] | None,
    *,
    method: str,
    sparsity: float,
    scope: Scope | None = None,
    structure: Structure | None = None,
    seed: int = 0,
    masks: Masks | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_bias: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    start: StartState | None = None,
    observer: PruneObserver | None = None,
    distributed: bool | None = None,
    collapse_guard: Guard = "row",
    protect_output: bool = True,
    round_to: int | None = None,
    particle_batching: str = "auto",
    precision: str = "fp32",
    final_sparsity: float | None = None,
    **options: Any,
) -> PruneResult:
    """:func:`prune`, returning the full :class:`PruneResult` (masks, history, state).

    Args (besides those of :func:`prune`, whose ``progress`` is ``observer.progress``):
        start: a state to continue from (``StartState(previous_result.state)``, the next
            iterative round) or to resume (``StartState(saved, resume=True)``).
        observer: progress bar, per-step callback and trace, periodic checkpoints.
        distributed: split the work over an initialised ``torch.distributed`` group
            (None: when one with more than one rank exists).
        final_sparsity: when this call is one round of a schedule (the pipelines'
            iterative rounds), the schedule's final target (>= ``sparsity``). The
            ``round_to`` reach rule is checked in full at it; at this round's ``sparsity``
            the local rounding only rounds, never refused for landing short
            (:mod:`sfpk.selection.aligned`, "Reach"). None: ``sparsity`` is final.

    Example:
        >>> first = sfpk.run_pruner(model, loader, method="sfpk", sparsity=0.5)  # doctest: +SKIP
        >>> second = sfpk.run_pruner(model, loader, method="sfpk", sparsity=0.75,
        ...     masks=first.masks, start=sfpk.StartState(first.state))  # doctest: +SKIP
    """
    pruner, masks, sparsity, scope, round_to = checked_call(
        model, data, method=method, sparsity=sparsity, scope=scope, structure=structure,
        seed=seed, masks=masks, include=include, exclude=exclude, include_bias=include_bias,
        collapse_guard=collapse_guard, protect_output=protect_output, options=options,
        round_to=round_to, final_sparsity=final_sparsity,
    )  # fmt: skip
    check_choice("particle_batching", particle_batching, BATCHINGS)
    device = next(model.parameters()).device
    ctx = PruneContext(
        device=device,
        seed=seed,
        distributed=distributed,
        collapse_guard=collapse_guard,
        round_to=round_to,
        particle_batching=particle_batching,
        precision=check_precision(precision, device),
    )
    if loss_fn is not None:
        ctx.loss_fn = loss_fn
    saved = ModelState(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if pruner.needs_data:  # one forward (and loss) on the first batch, no gradients
                data = check_first_batch(
                    model, data, loss_fn=loss_fn, uses_loss=pruner.uses_loss, device=device,
                    precision=ctx.precision,
                )  # fmt: skip
            torch.manual_seed(seed)
            result = pruner.prune(
                model,
                data if data is not None else [],
                masks,
                sparsity=sparsity,
                scope=scope,
                ctx=ctx,
                start=start,
                observer=observer,
            )
    finally:
        saved.restore(model)
    final = result.masks
    final.method = pruner.name
    final.target_sparsity = sparsity
    final.scope = scope
    final.round_to = round_to
    check_achieved_sparsity(final, sparsity, scope)
    if is_aligned(round_to) and abs(final.sparsity() - sparsity) > 0.01:
        how = (
            "rounds every block to the nearest multiple of %d filters/channels"
            if scope == "local"
            else "removes whole chunks of %d filters/channels within the budget"
        )
        log.warning(
            "round_to=%d " + how + ": %.4f of the weights removed for the requested %.4f",
            round_to, round_to, final.sparsity(), sparsity,
        )  # fmt: skip
    guard = final.collapse_guard
    if guard and guard["mode"] != guard["requested"]:
        log.warning(
            "collapse guard %r could not apply (only %r): %d kept weights are too few to keep "
            "every output row/layer connected",
            guard["requested"], guard["mode"], final.kept_weights(),
        )  # fmt: skip
    empty = [r["name"] for r in final.layer_report() if r["kept"] == 0 and len(r["shape"]) > 1]
    if empty:  # the guard is off, structured, or could not apply: say what the cut did
        log.warning(
            "%d masked tensor(s) keep no weight, so their layers are disconnected "
            "(collapse_guard=%r): %s",
            len(empty), collapse_guard, ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""),
        )  # fmt: skip
    log.info("%s: %.4f of %d weights removed", pruner.name, final.sparsity(), final.total_weights())
    return result


def check_pruning(
    model: nn.Module,
    *,
    method: str,
    sparsity: float,
    scope: Scope | None = None,
    structure: Structure | None = None,
    seed: int = 0,
    masks: Masks | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_bias: bool = False,
    collapse_guard: Guard = "row",
    protect_output: bool = True,
    round_to: int | None = None,
    data: Iterable[Batch] | None = None,
    **options: Any,
) -> Masks:
    """Check the arguments of :func:`prune` against ``model`` without pruning.

    The same checks :func:`run_pruner` makes before any work (the pipelines call this
    before a run's folder exists). Returns the starting masks. ``data`` (one batch is
    enough) is needed only by ``structure="coupled"`` and by ``"filter"`` with
    ``protect_output``, which trace the model. A ``round_to`` that cannot reach
    ``sparsity`` (the final target; the reach rule of :mod:`sfpk.selection.aligned`) is found
    here too: it depends on the widths only, not on any score. The check of the first
    batch against the model and the loss (:func:`sfpk.prune_args.check_first_batch`) is
    not made here: it needs the call's ``loss_fn``, and :func:`run_pruner` makes it first.

    Raises:
        ConfigError: as :func:`prune`; NonFiniteError: NaN or inf in the model's weights.
    """
    return checked_call(
        model, data, method=method, sparsity=sparsity, scope=scope, structure=structure,
        seed=seed, masks=masks, include=include, exclude=exclude, include_bias=include_bias,
        collapse_guard=collapse_guard, protect_output=protect_output, options=options,
        round_to=round_to,
    )[1]  # fmt: skip
