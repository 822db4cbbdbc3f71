"""The argument checks of a pruning call, made before any work.

:func:`sfpk.prune`, :func:`sfpk.run_pruner` and :func:`sfpk.api.check_pruning` (which the
pipelines call before a run's folder exists) share them: the method and its options, the
sparsity, seed and model, the structure and scope, and the starting masks, including the
layers that filter masks leave alone (:mod:`sfpk.masks.output_layers`).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from .errors import (
    ConfigError,
    DataMismatchError,
    NonFiniteError,
    check_choice,
    check_fraction,
    check_number,
)
from .losses import check_loss_targets
from .masks.core import SCOPES, Masks, Scope
from .masks.output_layers import declared_output_layers, find_output_layers, output_parameter_names
from .masks.prunable import Structure, check_structure, parse_nm, prunable_parameters
from .model_state import ModelState
from .pruners.base import Batch, Pruner, create_pruner, to_device
from .selection.aligned import (
    check_aligned_start,
    check_local_start,
    check_reachable,
    check_round_to,
    is_aligned,
)
from .selection.collapse import GUARDS, Guard
from .training.precision import autocast

__all__ = [
    "SEED_MAX",
    "checked_call",
    "check_seed",
    "check_model",
    "check_finite_tensors",
    "check_first_batch",
]

log = logging.getLogger(__name__)

SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64 bits; the pipelines derive 63-bit seeds


def checked_call(
    model: nn.Module,
    data: Iterable[Batch] | None,
    *,
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
    round_to: Any = None,
    final_sparsity: Any = None,
) -> tuple[Pruner, Masks, float, Scope, int | None]:
    """Every argument check of a pruning call: the pruner, the starting masks, the resolved
    sparsity, scope and ``round_to`` (not given: the starting masks' own).

    ``final_sparsity``: the target this call is one round towards (the pipelines'
    iterative rounds; None: ``sparsity`` itself). The ``round_to`` reach rule is checked in
    full at it; ``sparsity`` is then only rounded (:mod:`sfpk.selection.aligned`, "Reach").
    """
    pruner = create_pruner(method, **options)
    sparsity = check_fraction("sparsity", sparsity)
    check_seed(seed)
    check_model(model)
    check_structure(structure or "unstructured")
    given = structure or (masks.structure if isinstance(masks, Masks) else "unstructured")
    round_to = _resolve_round_to(round_to, masks, given)
    if not isinstance(protect_output, bool):
        raise ConfigError(f"protect_output={protect_output!r} must be True or False")
    unpruned: list[str] = []
    if masks is None and structure == "filter" and protect_output:
        exclude, unpruned = _exclude_output_layers(model, data, include, exclude, include_bias)
    start_given = masks is not None
    masks = _starting_masks(model, data, masks, structure, include, exclude, include_bias)
    keep_pruned = not getattr(pruner.options, "revive_pruned", False)
    # round_to: an earlier round's local rounding may overshoot this target; harmless when
    # the start's zeros may revive, checked per block under scope local (below)
    local_start = is_aligned(round_to) and scope == "local" and keep_pruned
    overshoot_ok = local_start or (is_aligned(round_to) and not keep_pruned)
    if start_given and not overshoot_ok and masks.sparsity() > sparsity + 1e-9:
        raise ConfigError(
            f"the starting masks already remove {masks.sparsity():.4f} of the weights, "
            f"more than the requested sparsity={sparsity}; pruned entries never revive"
        )
    if unpruned:
        masks.unpruned_outputs = unpruned
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
    check_aligned_start(masks, round_to, keep_pruned=keep_pruned)
    if start_given and local_start:
        _check_local_start(masks, sparsity, round_to)
    final = sparsity if final_sparsity is None else check_fraction("final_sparsity", final_sparsity)
    if final < sparsity:
        raise ConfigError(
            f"final_sparsity={final_sparsity!r} is below this round's sparsity={sparsity!r}; "
            "a schedule's rounds lead up to its final target"
        )
    # the final target, by the whole rule; this round's lower target then fits too (its
    # budget is no larger), and select_topk only rounds it
    check_reachable(masks, final, scope, round_to)
    return pruner, masks, sparsity, scope, round_to


def _check_local_start(masks: Masks, sparsity: float, round_to: Any) -> None:
    """Starting masks under ``round_to`` and scope local may already remove more than
    ``sparsity``: an earlier round's rounding can overshoot a later round's target. The
    local cut then keeps each block's rounded count (the start's own wherever the target
    asks for no more), provided no block keeps fewer than that."""
    check_local_start(masks, sparsity, round_to)
    if masks.sparsity() >= sparsity:
        log.info(
            "round_to=%d, scope local: the starting masks already remove %.4f of the weights, "
            "at least the requested %.4f; every block keeps its rounded count at it (pruned "
            "entries never revive)",
            round_to, masks.sparsity(), sparsity,
        )  # fmt: skip


def _resolve_round_to(round_to: Any, masks: Masks | None, structure: str) -> int | None:
    """``round_to`` checked; when not given, the starting masks' ``round_to``, so an
    iterative round keeps the widths its start was aligned to. A divisor above 1 of the
    start's is accepted too: widths aligned to 4 are aligned to 2. Not 1 (no rounding): the
    plain cut's counts would not match the aligned start's, and the check after the work
    would fail.

    Raises:
        ConfigError: a bad value (:func:`sfpk.selection.aligned.check_round_to`), or one that
            does not keep the starting masks' ``round_to`` (1, or not a divisor; both named).
    """
    start = masks.round_to if isinstance(masks, Masks) else None
    if round_to is None:
        return check_round_to(start, structure, name="the starting masks' round_to")
    value = check_round_to(round_to, structure)
    if is_aligned(start) and (not is_aligned(value) or start % value):
        raise ConfigError(
            f"round_to={value} does not keep the starting masks' round_to={start}; pass "
            f"round_to={start} (or leave it out) or one of its divisors above 1 to keep "
            "their aligned widths (round_to=1, no rounding, needs starting masks without "
            "round_to: their counts would not match the plain cut's)"
        )
    return value


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
    """One input of ``data`` (a batch of 1), as the model receives it, leaving ``data`` and
    every random generator as they were.

    A DataLoader over a map-style data set collates its first item with the loader's own
    ``collate_fn``; any other re-iterable (a list, a DataLoader over an iterable data set)
    yields its first batch from a fresh iterator. A one-shot iterator cannot be read twice,
    so it is refused rather than robbed of its first batch.
    """
    missing = f"{why} traces the model on one input: the data has none"
    suffix = f"; {hint}" if hint else ""
    if data is None:
        raise ConfigError(missing + suffix)
    if isinstance(data, Iterator):
        raise ConfigError(
            f"{why} traces the model on one input, and the data is a one-shot iterator that "
            f"cannot be read again: pass a list or a DataLoader{suffix}"
        )
    with torch.random.fork_rng(devices=[]):
        inputs = _first_inputs(data)
    if inputs is None:
        raise ConfigError(missing + suffix)
    return inputs[:1]


def _first_inputs(data: Iterable[Batch]) -> Tensor | None:
    """The inputs of ``data``'s first batch, or None when it has none."""
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        if len(data.dataset) == 0:
            return None
        item = data.dataset[0]
        return (data.collate_fn(item) if data.batch_size is None else data.collate_fn([item]))[0]
    for inputs, _ in data:
        return inputs
    return None


def _exclude_output_layers(
    model: nn.Module,
    data: Iterable[Batch] | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    include_bias: bool,
) -> tuple[list[str] | None, list[str]]:
    """``exclude`` plus the prunable parameters of the layers producing the model's output,
    and the names of those layers that had prunable parameters.

    Filter masks on those layers would remove outputs (classes), not computation
    (:mod:`sfpk.masks.output_layers`).
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
    owned = {layer: [n for n in output_parameter_names(model, [layer]) if n in prunable]
             for layer in layers}  # fmt: skip
    protected = [n for names in owned.values() for n in names]
    if not protected:
        return (list(exclude) if exclude else None), []
    if len(protected) == len(prunable):
        raise ConfigError(
            f"structure='filter': every prunable parameter ({', '.join(protected)}) belongs "
            f"to the layer(s) producing the model's output ({', '.join(layers)}), whose "
            "filters are the outputs; prune another structure, or pass protect_output=False"
        )
    unpruned = [layer for layer, names in owned.items() if names]
    log.info(
        "structure='filter': %s produce(s) the model's output and stay unpruned "
        "(protect_output=False prunes them)", ", ".join(unpruned),
    )  # fmt: skip
    # exclude holds fnmatch patterns: escape names such as ModuleDict keys "cls[a]".
    return [*(exclude or []), *(glob.escape(n) for n in protected)], unpruned


def _starting_masks(
    model: nn.Module,
    data: Iterable[Batch] | None,
    masks: Masks | None,
    structure: Structure | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    include_bias: bool,
) -> Masks:
    """All-ones masks of the prunable parameters, or the checked starting ``masks``."""
    if masks is None and structure == "coupled":
        from .deploy.channel_groups import coupled_channel_masks  # torch-pruning: the slim extra

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
    return masks


_FIRST = "the first batch of the pruning data"


def check_first_batch(
    model: nn.Module,
    data: Iterable[Batch] | None,
    *,
    loss_fn: Callable[..., Tensor] | None,
    uses_loss: bool,
    device: torch.device,
    precision: str = "fp32",
) -> Iterable[Batch] | None:
    """Run the model, and the loss, once on the first batch of ``data``; return ``data``.

    One forward without gradients, in eval mode (the model is then left as it was),
    before any work: a batch that does not fit the model, targets outside its classes, or
    a language model's output under the default classification loss are then one
    :class:`DataMismatchError` naming the argument to change, with the raw error as its
    cause, instead of a PyTorch error from deep inside the first step.

    Nothing is read twice and no random number is drawn: a list's first item and a
    map-style DataLoader's collation of its data set's first ``batch_size`` items (no
    worker starts, no pass opens) are checked here; a one-shot iterator or any other
    re-iterable comes back wrapped, and its first batch is checked when the method reads
    it, before the method's first forward, so the batches and their order stay the same.

    Args:
        loss_fn: the caller's loss; None is the default, mean cross-entropy over a class
            dimension (:func:`torch.nn.functional.cross_entropy`).
        uses_loss: False for methods that only run forward passes (wanda): the targets and
            the loss are not checked.

    Raises:
        DataMismatchError: the forward or the loss fails on the batch, integer targets
            fall outside ``[0, C)`` for a classification output of ``C`` classes, or the
            model returns ``[B, T, V]`` logits for ``[B, T]`` token targets under the
            default loss (pass ``loss_fn=sfpk.losses.next_token_loss``).
    """

    def check(batch: Batch) -> None:
        inputs, targets = to_device(batch, device)
        saved = ModelState(model)
        try:
            model.eval()
            with torch.random.fork_rng(devices=[]):
                _check_batch(model, inputs, targets, loss_fn=loss_fn, uses_loss=uses_loss,
                             device=device, precision=precision)  # fmt: skip
        finally:
            saved.restore(model)

    if data is None:
        return data  # the method says that it has no data, in its own words
    if isinstance(data, Iterator):
        return _checked_stream(data, check)
    if isinstance(data, Sequence):
        if len(data):
            check(data[0])
        return data
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        first = _first_loader_batch(data)
        if first is not None:
            check(first)
        return data
    return _CheckedData(data, check)


def _checked_stream(batches: Iterable[Batch], check: Callable[[Batch], None]) -> Iterator[Batch]:
    """``batches``, with ``check`` run on the first one before it is handed on."""
    for batch in batches:
        if check is not None:
            check(batch)
            check = None
        yield batch


class _CheckedData:
    """A re-iterable ``data`` whose first batch read, in any pass, is checked first."""

    def __init__(self, data: Iterable[Batch], check: Callable[[Batch], None]) -> None:
        self.data, self._check = data, check

    def __iter__(self) -> Iterator[Batch]:
        return self._pass()

    def _pass(self) -> Iterator[Batch]:  # a generator: nothing runs until the first read
        for batch in self.data:
            if self._check is not None:
                check, self._check = self._check, None
                check(batch)
            yield batch


def _check_batch(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    *,
    loss_fn: Callable[..., Tensor] | None,
    uses_loss: bool,
    device: torch.device,
    precision: str,
) -> None:
    """:func:`check_first_batch` on the batch, on the device, with the model in eval mode."""
    shapes = f"inputs {_describe(inputs)}, targets {_describe(targets)}"
    with torch.no_grad(), autocast(device, precision):
        try:
            output = model(inputs)
        except Exception as err:
            raise DataMismatchError(
                f"the model's forward failed on {_FIRST} ({shapes}): {_first_line(err)}; "
                "pass `data` whose inputs the model takes"
            ) from err
        if not uses_loss:
            return
        shapes += f"; the model's output {_describe(output)}"
        check_loss_targets(
            output, targets, loss_fn=loss_fn, inputs=inputs, where=f"{_FIRST} ({shapes})",
            task=getattr(model, "sfpk_task", None),
        )  # fmt: skip
        try:
            loss = (loss_fn or torch.nn.functional.cross_entropy)(output, targets)
        except Exception as err:
            which = "the default loss_fn (cross-entropy)" if loss_fn is None else "loss_fn"
            raise DataMismatchError(
                f"{which} failed on {_FIRST} ({shapes}): {_first_line(err)}; pass a `loss_fn` "
                "that takes this output and these targets, or `data` whose targets fit it"
            ) from err
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise DataMismatchError(
            f"loss_fn returned {_describe(loss)} on {_FIRST} ({shapes}); the pruning "
            "methods differentiate one number: pass a `loss_fn` that reduces to a scalar"
        )


def _describe(value: Any) -> str:
    """``float32 [16, 5]`` for a tensor, else the type's name."""
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return f"a {type(value).__name__}"


def _first_line(err: BaseException) -> str:
    """The first line of an error's message (messages stay one line), with its type."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _first_loader_batch(loader: DataLoader) -> Batch | None:
    """A map-style DataLoader's collation of its data set's first ``batch_size`` items (the
    first item alone without automatic batching), with every random generator left as it
    was; None for an empty data set."""
    size = len(loader.dataset)
    if size == 0:
        return None
    with torch.random.fork_rng(devices=[]):
        if loader.batch_sampler is None:  # no automatic batching: an item is a batch
            return loader.collate_fn(loader.dataset[0])
        items = [loader.dataset[i] for i in range(min(loader.batch_size or 1, size))]
        return loader.collate_fn(items)
