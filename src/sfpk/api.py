"""The pruning API: ``sfpk.prune(...) -> Masks`` and ``sfpk.run_pruner(...) -> PruneResult``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .collapse import GUARDS, Guard
from .errors import ConfigError, NonFiniteError, check_choice, check_fraction, check_number
from .masks import SCOPES, Masks, Scope, prunable_parameters
from .output_layers import declared_output_layers, find_output_layers, output_parameter_names
from .precision import check_precision
from .prunable import Structure, check_structure, parse_nm
from .pruners.base import (
    Batch,
    PruneContext,
    PruneObserver,
    Pruner,
    PruneResult,
    StartState,
    create_pruner,
)
from .pruners.particles.batching import BATCHINGS
from .selection import check_achieved_sparsity

__all__ = [
    "prune",
    "run_pruner",
    "check_pruning",
    "check_model",
    "check_seed",
    "check_finite_tensors",
]

SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64 bits; the pipelines derive 63-bit seeds

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
            pruned (see :func:`sfpk.prunable.prunable_parameters` and ``include``/``exclude``).
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list). Data-free
            methods (rand, mag, synflow) need only one batch, for the input shape.
        method: one of :func:`sfpk.methods` (rand, mag, snip, grasp, synflow, wanda, spode,
            sfpk).
        sparsity: fraction of prunable weights removed, in (0, 1); 0.95 keeps 5 %.
        scope: ``"global"`` (one ranking over all layers), ``"local"`` (each layer alone) or
            ``"row"`` (each output row alone; unstructured only). None: the method's
            default, ``"global"`` for all but wanda, which compares within rows as its
            paper does (globally for structured masks).
        structure: None or ``"unstructured"``, ``"filter"`` (output filters/neurons),
            ``"head"`` / ``"neuron"`` / ``"head+neuron"`` (transformer attention heads and MLP
            neurons, each removed from every tensor it spans; :mod:`sfpk.groups`) or
            ``"channel"`` (input channels/features).
        seed: seeds every random choice of this call (the caller's RNG state is restored).
        masks: starting masks (iterative pruning); entries already pruned stay pruned.
        include, exclude, include_bias: choose the prunable parameters.
        loss_fn: the loss for data-driven methods (mean cross-entropy by default).
        progress: show a progress bar for long methods.
        collapse_guard: keep at least one weight per output row (``"row"``, default), per
            layer (``"layer"``) or none (``"off"``) in unstructured global/local cuts, so
            extreme sparsity never disconnects a layer; counts stay exact, and what it did
            is in the masks' ``collapse_guard`` (:mod:`sfpk.collapse`).
        protect_output: with ``structure="filter"``, leave the layers that produce the
            model's output unpruned: their filters are the outputs themselves (a
            classifier's classes). Found from one input of ``data``, or declared by the model
            as ``sfpk_output_layers`` (:mod:`sfpk.output_layers`). False prunes them as the
            reference implementation does.
        particle_batching: SFPK/SpODE's n forward+backward passes one per particle
            (``"loop"``), in one vmapped pass (``"vmap"``), or ``"auto"`` (vmap on GPUs, the
            loop on CPU); the results agree to fp32 tolerance.
        precision: the forward passes in ``"fp32"``, ``"bf16"`` or ``"fp16"`` (GPU only)
            autocast (:mod:`sfpk.precision`); scores, particles and masks stay fp32.
        **options: the method's hyperparameters (``sfpk.pruner_class(method).Options``).

    Returns:
        0/1 :class:`Masks` whose achieved sparsity has been checked, globally and per layer.

    Raises:
        UnknownNameError: unknown method, scope or structure.
        ConfigError: sparsity outside (0, 1), an unknown option, a bad option value, or a
            ``structure`` that differs from the starting ``masks``'.

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
    particle_batching: str = "auto",
    precision: str = "fp32",
    **options: Any,
) -> PruneResult:
    """:func:`prune`, returning the full :class:`PruneResult` (masks, history, state).

    Args (besides those of :func:`prune`, whose ``progress`` is ``observer.progress``):
        start: a state to continue from (``StartState(previous_result.state)``, the next
            iterative round) or to resume (``StartState(saved, resume=True)``).
        observer: progress bar, per-step callback and trace, periodic checkpoints.
        distributed: split the work over an initialised ``torch.distributed`` group
            (None: when one with more than one rank exists).

    Example:
        >>> first = sfpk.run_pruner(model, loader, method="sfpk", sparsity=0.5)  # doctest: +SKIP
        >>> second = sfpk.run_pruner(model, loader, method="sfpk", sparsity=0.75,
        ...     masks=first.masks, start=sfpk.StartState(first.state))  # doctest: +SKIP
    """
    pruner, masks, sparsity, scope = _checked_call(
        model, data, method, sparsity, scope, structure, seed, masks, include, exclude,
        include_bias, collapse_guard, protect_output, options,
    )  # fmt: skip
    check_choice("particle_batching", particle_batching, BATCHINGS)
    device = next(model.parameters()).device
    ctx = PruneContext(
        device=device,
        seed=seed,
        distributed=distributed,
        collapse_guard=collapse_guard,
        particle_batching=particle_batching,
        precision=check_precision(precision, device),
    )
    if loss_fn is not None:
        ctx.loss_fn = loss_fn
    saved = _ModelState(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
    check_achieved_sparsity(final, sparsity, scope)
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
    data: Iterable[Batch] | None = None,
    **options: Any,
) -> Masks:
    """Check the arguments of :func:`prune` against ``model`` without pruning.

    The same checks :func:`run_pruner` makes before any work (the pipelines call this
    before a run's folder exists). Returns the starting masks. ``data`` (one batch is
    enough) is needed only by ``structure="coupled"`` and by ``"filter"`` with
    ``protect_output``, which trace the model.

    Raises:
        ConfigError: as :func:`prune`; NonFiniteError: NaN or inf in the model's weights.
    """
    return _checked_call(
        model, data, method, sparsity, scope, structure, seed, masks, include, exclude,
        include_bias, collapse_guard, protect_output, options,
    )[1]  # fmt: skip


def _checked_call(
    model: nn.Module,
    data: Iterable[Batch] | None,
    method: str,
    sparsity: Any,
    scope: Scope | None,
    structure: Structure | None,
    seed: Any,
    masks: Masks | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    include_bias: bool,
    collapse_guard: Guard,
    protect_output: bool,
    options: dict[str, Any],
) -> tuple[Pruner, Masks, float, Scope]:
    """Every argument check of a pruning call: the pruner, the starting masks, the resolved
    sparsity and scope."""
    pruner = create_pruner(method, **options)
    sparsity = check_fraction("sparsity", sparsity)
    check_seed(seed)
    check_model(model)
    check_structure(structure or "unstructured")
    if not isinstance(protect_output, bool):
        raise ConfigError(f"protect_output={protect_output!r} must be True or False")
    if masks is None and structure == "filter" and protect_output:
        exclude = _exclude_output_layers(model, data, include, exclude, include_bias)
    masks = _starting_masks(model, data, masks, sparsity, structure, include, exclude, include_bias)
    nm = parse_nm(masks.structure)
    if nm is not None and abs(sparsity - (1.0 - nm[0] / nm[1])) > 1e-9:
        raise ConfigError(
            f"structure={masks.structure!r} removes {1.0 - nm[0] / nm[1]:g} of the masked "
            f"weights; sparsity={sparsity!r} differs (pass sparsity={1.0 - nm[0] / nm[1]:g})"
        )
    if scope is None:  # a row is one filter in a structured mask: rank those globally
        scope = pruner.default_scope if masks.structure == "unstructured" else "global"
    check_choice("scope", scope, SCOPES)
    check_choice("collapse_guard", collapse_guard, GUARDS)
    return pruner, masks, sparsity, scope


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an int that every generator accepts, else ConfigError."""
    seed = check_number("seed", seed, integer=True)
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed!r} must be in [0, 2**63 - 1]")
    return seed


def check_model(model: nn.Module) -> None:
    """Raise unless ``model`` is an ``nn.Module`` with real, floating, finite parameters.

    Raises:
        ConfigError: not a module, no parameters, parameters on the ``meta`` device (not
            materialised: load weights first, e.g. ``load_state_dict(..., assign=True)``)
            or of a non-floating dtype (integer or quantised weights cannot be pruned here).
        NonFiniteError: a parameter holds NaN or infinity (named, with the count).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    params = list(model.named_parameters())
    if not params:
        raise ConfigError(f"{type(model).__name__} has no parameters to prune")
    for name, param in params:
        if param.is_meta:
            raise ConfigError(
                f"parameter {name!r} is on the 'meta' device (no values): materialise the "
                "model (load its weights) before pruning"
            )
        if not param.is_floating_point():
            raise ConfigError(
                f"parameter {name!r} has dtype {param.dtype}; pruning needs floating-point "
                "weights (float32, float16, bfloat16 or float64)"
            )
    check_finite_tensors(dict(params), where="model weights")


def check_finite_tensors(tensors: Mapping[str, Tensor], *, where: str) -> None:
    """Raise NonFiniteError naming the first tensor of ``tensors`` that holds NaN or inf."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteError(
                f"{where}: {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                f"{tensor.numel()}; fix or re-load the weights before pruning"
            )


def _example_input(data: Iterable[Batch] | None, why: str, hint: str = "") -> Tensor:
    """One input of ``data`` without drawing from a DataLoader's random stream."""
    dataset = getattr(data, "dataset", None)
    if dataset is not None:
        return dataset[0][0].unsqueeze(0)
    for inputs, _ in data or ():
        return inputs[:1]
    raise ConfigError(
        f"{why} traces the model on one input: the data has none" + (f"; {hint}" if hint else "")
    )


def _exclude_output_layers(
    model: nn.Module,
    data: Iterable[Batch] | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    include_bias: bool,
) -> list[str] | None:
    """``exclude`` plus the prunable parameters of the layers producing the model's output.

    Filter masks on those layers would remove outputs (classes), not computation
    (:mod:`sfpk.output_layers`).
    """
    layers = declared_output_layers(model)
    if layers is None:
        why = (
            "structure='filter' with protect_output=True (the default) keeps the filters of "
            "the layer producing the model's output: it"
        )
        hint = "pass a batch, declare model.sfpk_output_layers or pass protect_output=False"
        example = _example_input(data, why, hint).to(next(model.parameters()).device)
        layers = find_output_layers(model, example)
    prunable = prunable_parameters(
        model, include=include, exclude=exclude, include_bias=include_bias
    )
    protected = [n for n in output_parameter_names(model, layers) if n in prunable]
    if not protected:
        return list(exclude) if exclude else None
    if len(protected) == len(prunable):
        raise ConfigError(
            f"structure='filter': every prunable parameter ({', '.join(protected)}) belongs "
            f"to the layer(s) producing the model's output ({', '.join(layers)}), whose "
            "filters are the outputs; prune another structure, or pass protect_output=False"
        )
    log.info(
        "structure='filter': %s produce(s) the model's output and stay unpruned "
        "(protect_output=False prunes them)", ", ".join(layers),
    )  # fmt: skip
    return [*(exclude or []), *protected]


def _starting_masks(
    model: nn.Module,
    data: Iterable[Batch] | None,
    masks: Masks | None,
    sparsity: float,
    structure: Structure | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    include_bias: bool,
) -> Masks:
    """All-ones masks of the prunable parameters, or the checked starting ``masks``."""
    if masks is None and structure == "coupled":
        from .channel_groups import coupled_channel_masks  # torch-pruning: the slim extra

        prunable = prunable_parameters(
            model, include=include, exclude=exclude, include_bias=include_bias
        )
        return coupled_channel_masks(model, _example_input(data, "structure='coupled'"), prunable)
    if masks is None:
        return Masks.ones(
            model,
            structure=structure or "unstructured",
            include=include,
            exclude=exclude,
            include_bias=include_bias,
        )
    masks.check_fits(model)
    if structure and structure != masks.structure:
        raise ConfigError(
            f"structure={structure!r} differs from the starting masks' "
            f"structure={masks.structure!r}; the result keeps the masks' structure"
        )
    if masks.sparsity() > sparsity + 1e-9:
        raise ConfigError(
            f"the starting masks already remove {masks.sparsity():.4f} of the weights, "
            f"more than the requested sparsity={sparsity}; pruned entries never revive"
        )
    return masks


class _ModelState:
    """Mode, buffers and requires_grad flags of a model, to restore after pruning."""

    def __init__(self, model: nn.Module) -> None:
        self.training = model.training
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            module.training = self.modes.get(name, self.training)
        for name, buffer in model.named_buffers():
            if name in self.buffers:
                buffer.copy_(self.buffers[name])
        for name, param in model.named_parameters():
            param.requires_grad_(self.requires_grad.get(name, True))
