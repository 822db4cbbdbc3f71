"""Masks: a set of masks keyed by parameter name, with counting, apply and mask files.

The all-ones masks of a model (:meth:`Masks.ones`, :meth:`Masks.coupled_ones`) start every
pruning call: which parameters get masks (:func:`sfpk.masks.prunable.prunable_parameters`),
which of them can carry a mask of the structure, and, for head/neuron structures, the
coupled groups found in the model (:mod:`sfpk.masks.groups`).

Conventions used everywhere in sfpk (written once, here; mask shapes per structure are in
:mod:`sfpk.masks.prunable`):

* ``sparsity`` is the fraction of prunable **weights removed**, in (0, 1); ``density`` is the
  fraction kept, ``1 - sparsity``. Both are counted in weights, also for structured masks.
* Selection keeps exactly ``P - floor(sparsity * P)`` entries (unstructured), breaking ties
  deterministically: among equal scores, the entry that comes first in the flattened order
  (mask names in model order, each flattened row-major) is removed first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, MaskMismatchError
from .files import read_mask_file, write_mask_file
from .groups import Coupling, find_groups, group_mask_shape
from .prunable import (
    FilterFn,
    Structure,
    check_structure,
    eligible_for,
    group_kinds,
    mask_shape,
    prunable_parameters,
    tied_biases,
)

__all__ = [
    "Scope",
    "SCOPES",
    "Masks",
    "reduce_to_mask",
    "removal_count",
    "load_masks",
]

Scope = Literal["global", "local", "row"]
SCOPES: tuple[str, ...] = ("global", "local", "row")
# The structures whose widths round_to aligns (sfpk.selection.aligned).
ALIGNED_STRUCTURES: tuple[str, ...] = ("filter", "channel", "coupled")


def reduce_to_mask(score: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum an element-wise score over the dims a structured mask broadcasts along."""
    dims = [d for d, (s, m) in enumerate(zip(score.shape, shape, strict=True)) if m == 1 and s != 1]
    return score.sum(dim=dims, keepdim=True) if dims else score


def removal_count(total: int, sparsity: float) -> int:
    """``floor(sparsity * total)``, robust to float error (0.29 * 100 is 28.999...).

    The product's rounding error grows with ``total`` (about ``total * 1e-16``), so the
    slack does too: 0.29 * 10**8 is 28999999.999999996.
    """
    return min(total, math.floor(sparsity * total + 1e-9 + total * 1e-15))


class Masks(Mapping[str, Tensor]):
    """A set of masks keyed by parameter name, with its structure and provenance.

    It maps names to float tensors of 0/1 values (or continuous values while a particle
    simulation runs) that broadcast against the named parameters. ``shapes`` records the
    parameter shapes so a mask file can be checked against a model without it. Head and
    neuron structures carry a ``coupling`` (:mod:`sfpk.masks.groups`): which mask entries form one
    attention head or MLP neuron.

    Example:
        >>> masks = sfpk.prune(model, loader, method="mag", sparsity=0.9)
        >>> masks.sparsity()        # doctest: +SKIP
        0.9
        >>> masks.apply(model)      # zeros the pruned weights in place
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        *,
        shapes: Mapping[str, Sequence[int]],
        structure: Structure = "unstructured",
        method: str | None = None,
        target_sparsity: float | None = None,
        scope: Scope | None = None,
        tied_biases: Mapping[str, str] | None = None,
        collapse_guard: Mapping[str, Any] | None = None,
        coupling: Coupling | None = None,
        unpruned_outputs: Sequence[str] = (),
        round_to: int | None = None,
    ) -> None:
        check_structure(structure)
        if set(tensors) != set(shapes):
            raise MaskMismatchError("mask names and parameter-shape names differ")
        if (coupling is None) != (group_kinds(structure) is None):
            raise MaskMismatchError(
                f"structure={structure!r} {'needs' if coupling is None else 'takes no'} "
                "coupled-group table"
            )
        if coupling is not None:
            coupling.check(shapes)
        # ``shapes`` fixes the order (model order): ``tensors`` may come sorted by name, as
        # safetensors returns them, and the order decides tie-breaking and flat layouts.
        self.shapes: dict[str, tuple[int, ...]] = {n: tuple(s) for n, s in shapes.items()}
        self._tensors: dict[str, Tensor] = {n: tensors[n] for n in self.shapes}
        for name, tensor in self._tensors.items():
            expected = (
                group_mask_shape(self.shapes[name], coupling.dim_of(name))
                if coupling is not None
                else mask_shape(name, self.shapes[name], structure)
            )
            if tuple(tensor.shape) != expected:
                raise MaskMismatchError(
                    f"mask {name!r} has shape {tuple(tensor.shape)}, expected {expected} "
                    f"for a {structure} mask of a parameter of shape {self.shapes[name]}"
                )
        self.structure: Structure = structure
        self.coupling = coupling
        self.method = method
        self.target_sparsity = target_sparsity
        self.scope = scope
        # Filter masks also silence the bias of the same layer (a removed filter must not
        # keep emitting its constant bias): bias name -> weight name.
        self.tied_biases: dict[str, str] = dict(tied_biases or {})
        # What the selection's collapse guard did (sfpk.selection.collapse): {"mode", "rescued"}.
        self.collapse_guard: dict[str, Any] | None = (
            dict(collapse_guard) if collapse_guard is not None else None
        )
        # Layers producing the model's output that filter masks left unpruned, because their
        # filters are the outputs themselves (sfpk.masks.output_layers; protect_output).
        self.unpruned_outputs: list[str] = list(unpruned_outputs)
        # Every block keeps a multiple of this many filters/channels (sfpk.selection.aligned).
        self.round_to = round_to

    @classmethod
    def ones(
        cls,
        model: nn.Module,
        *,
        structure: Structure = "unstructured",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        include_bias: bool = False,
        filter_fn: FilterFn | None = None,
    ) -> Masks:
        """All-ones masks for the prunable parameters of ``model`` (see prunable_parameters).

        Parameters that cannot carry a mask of ``structure`` are left out: channel masks
        skip weights with one input channel per group (depthwise convs, a conv on
        one-channel inputs), N:M masks skip biases and weights whose input dimension is not
        a multiple of M (see :mod:`sfpk.masks.prunable`).

        Raises:
            ConfigError: if no parameter is left to mask.
        """
        check_structure(structure)
        params = prunable_parameters(
            model, include=include, exclude=exclude, include_bias=include_bias, filter_fn=filter_fn
        )
        kinds = group_kinds(structure)
        if structure == "coupled":
            raise ConfigError(
                "structure='coupled' traces the model on an input: use sfpk.prune (it "
                "takes one from the data) or sfpk.deploy.channel_groups.coupled_channel_masks"
            )
        if kinds is not None:
            return cls._coupled_ones(model, params, structure, kinds)
        params = {n: p for n, p in params.items() if eligible_for(structure, n, p.shape)}
        if not params:
            why = (
                "every selected weight has a single input channel per group (depthwise or "
                "one-channel convs)"
                if structure == "channel"
                else "no selected weight has an input dimension that is a multiple of M"
            )
            raise ConfigError(
                f"no parameter can get a {structure} mask: {why}; use structure='filter' "
                "or 'unstructured'"
            )
        tensors = {
            n: torch.ones(mask_shape(n, p.shape, structure), device=p.device, dtype=p.dtype)
            for n, p in params.items()
        }
        tied = tied_biases(model, params) if structure == "filter" else {}
        return cls(
            tensors,
            shapes={n: p.shape for n, p in params.items()},
            structure=structure,
            tied_biases=tied,
        )

    @classmethod
    def _coupled_ones(
        cls,
        model: nn.Module,
        prunable: Mapping[str, nn.Parameter],
        structure: Structure,
        kinds: Sequence[str],
    ) -> Masks:
        """All-ones head/neuron masks over the groups whose every member is prunable."""
        coupling = find_groups(model, kinds, keep=lambda name: name in prunable)
        params = dict(model.named_parameters())
        rows = {n: params[n] for n in coupling.names() if coupling.dim_of(n) == 0}
        return cls.coupled_ones(model, coupling, structure, tied_biases(model, rows))

    @classmethod
    def coupled_ones(
        cls,
        model: nn.Module,
        coupling: Coupling,
        structure: Structure,
        tied: Mapping[str, str],
    ) -> Masks:
        """All-ones masks of a coupled ``structure`` over the members of ``coupling``:
        row masks for dim-0 members, column masks for dim-1 ones; ``tied`` parameters
        (bias name -> weight name) follow their weight's mask."""
        params = dict(model.named_parameters())
        names = coupling.names()
        tensors = {
            n: torch.ones(
                group_mask_shape(params[n].shape, coupling.dim_of(n)),
                device=params[n].device,
                dtype=params[n].dtype,
            )
            for n in names
        }
        return cls(
            tensors,
            shapes={n: params[n].shape for n in names},
            structure=structure,
            tied_biases=tied,
            coupling=coupling,
        )

    def with_tensors(self, tensors: Mapping[str, Tensor], **info: Any) -> Masks:
        """A new mask set with the same names/shapes/structure and new tensors."""
        out = Masks(
            tensors,
            shapes=self.shapes,
            structure=self.structure,
            method=info.get("method", self.method),
            target_sparsity=info.get("target_sparsity", self.target_sparsity),
            scope=info.get("scope", self.scope),
            tied_biases=self.tied_biases,
            collapse_guard=info.get("collapse_guard", self.collapse_guard),
            coupling=self.coupling,
            unpruned_outputs=self.unpruned_outputs,
            round_to=info.get("round_to", self.round_to),
        )
        return out

    # -- Mapping protocol ---------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return (
            f"Masks({len(self)} tensors, structure={self.structure}, "
            f"sparsity={self.sparsity():.4f}, method={self.method})"
        )

    # -- counting -----------------------------------------------------------------------
    def weights_per_entry(self, name: str) -> int:
        """How many weights one entry of mask ``name`` controls (1 when unstructured)."""
        return math.prod(self.shapes[name]) // self._tensors[name].numel()

    def total_weights(self) -> int:
        """Number of prunable weights."""
        return sum(math.prod(s) for s in self.shapes.values())

    def kept_weights(self, name: str | None = None) -> int:
        """Number of weights the mask keeps (non-zero), overall or for one parameter."""
        names = [name] if name is not None else list(self)
        return sum(
            int(torch.count_nonzero(self._tensors[n])) * self.weights_per_entry(n) for n in names
        )

    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return self.kept_weights() / self.total_weights()

    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - self.density()

    def layer_report(self) -> list[dict[str, Any]]:
        """Per-parameter rows: name, shape, total, kept, sparsity."""
        rows = []
        for name in self:
            total = math.prod(self.shapes[name])
            kept = self.kept_weights(name)
            rows.append(
                {
                    "name": name,
                    "shape": list(self.shapes[name]),
                    "total": total,
                    "kept": kept,
                    "sparsity": 1.0 - kept / total,
                }
            )
        return rows

    # -- using masks with a model -------------------------------------------------------
    def check_fits(self, model: nn.Module) -> None:
        """Raise MaskMismatchError unless every mask names a parameter of the right shape."""
        params = dict(model.named_parameters())
        missing = [n for n in [*self, *self.tied_biases] if n not in params]
        if missing:
            raise MaskMismatchError(
                f"the masks name parameters the model does not have: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
        wrong = [
            f"{n} (mask for {self.shapes[n]}, model has {tuple(params[n].shape)})"
            for n in self
            if tuple(params[n].shape) != self.shapes[n]
        ]
        if wrong:
            raise MaskMismatchError(f"mask/model shape mismatch: {'; '.join(wrong[:5])}")

    def binary(self) -> Masks:
        """These masks as exact 0/1 tensors (non-zero -> 1)."""
        return self.with_tensors({n: (m != 0).to(m.dtype) for n, m in self.items()})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Mutates ``model``: multiplies each masked parameter by its (0/1) mask in place.

        Zeros are baked into the weights; keep them zero during training with
        :meth:`mask_gradients_` (the Trainer does this) or :meth:`reapply_`.
        """
        self.check_fits(model)
        params = dict(model.named_parameters())
        for name, mask in self.effective_masks().items():
            p = params[name]
            p.mul_((mask != 0).to(device=p.device, dtype=p.dtype))
        return model

    reapply_ = apply

    @torch.no_grad()
    def mask_gradients_(self, model: nn.Module) -> None:
        """Mutates the gradients of ``model``: zeros the gradient of every pruned entry."""
        params = dict(model.named_parameters())
        for name, mask in self.effective_masks().items():
            grad = params[name].grad
            if grad is not None:
                grad.mul_((mask != 0).to(device=grad.device, dtype=grad.dtype))

    def effective_masks(self) -> dict[str, Tensor]:
        """Masks for every parameter they act on, including tied biases of pruned filters."""
        out = dict(self._tensors)
        for bias, weight in self.tied_biases.items():
            if bias not in out:
                out[bias] = self._tensors[weight].reshape(-1)
        return out

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Masks:
        """A copy on another device / dtype."""
        return self.with_tensors({n: m.to(device=device, dtype=dtype) for n, m in self.items()})

    # -- files (the format lives in sfpk.masks.files) -----------------------------------
    def header(self) -> dict[str, Any]:
        """The JSON header written with the tensors (besides the format and version)."""
        return {
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.sparsity(),
            "structure": self.structure,
            "scope": self.scope,
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "tied_biases": self.tied_biases,
            "collapse_guard": self.collapse_guard,
            "coupling": self.coupling.to_json() if self.coupling is not None else None,
            "unpruned_outputs": self.unpruned_outputs,
            "round_to": self.round_to,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the masks to a safetensors file (atomically: temp file, then rename)."""
        return write_mask_file(path, self._tensors, self.header())

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> Masks:
        """Read a mask file written by :meth:`save`; check it against ``model`` if given.

        Raises:
            CheckpointError: missing, corrupted or foreign file, or a ``round_to`` in its
                header that is not an integer >= 1.
            MaskMismatchError: the masks do not fit ``model``.
        """
        tensors, info = read_mask_file(path)
        masks = cls(
            tensors,
            shapes=info["shapes"],
            structure=info["structure"],
            method=info.get("method"),
            target_sparsity=info.get("target_sparsity"),
            scope=info.get("scope"),
            tied_biases=info.get("tied_biases"),
            collapse_guard=info.get("collapse_guard"),
            coupling=Coupling.from_json(info["coupling"]) if info.get("coupling") else None,
            unpruned_outputs=info.get("unpruned_outputs") or (),
            round_to=_header_round_to(path, info.get("round_to"), info["structure"]),
        )
        if model is not None:
            masks.check_fits(model)
        return masks


def _header_round_to(path: str | os.PathLike, value: Any, structure: str) -> int | None:
    """The ``round_to`` of a mask file's header: absent (None) or an integer >= 1, above 1
    only with a structure that ``round_to`` aligns (:data:`ALIGNED_STRUCTURES`).

    Raises:
        CheckpointError: any other value, or one the file's structure cannot carry, with
            the file and the value.
    """
    if not (
        value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    ):
        raise CheckpointError(
            f"mask file {str(path)!r}: round_to={value!r} in its header must be an integer "
            ">= 1 or absent"
        )
    if value is not None and value > 1 and structure not in ALIGNED_STRUCTURES:
        raise CheckpointError(
            f"mask file {str(path)!r}: round_to={value} in its header needs structure "
            f"{', '.join(ALIGNED_STRUCTURES)}, not the file's structure={structure!r}"
        )
    return value


def load_masks(path: str | os.PathLike, model: nn.Module | None = None) -> Masks:
    """Read a mask file; see :meth:`Masks.load`."""
    return Masks.load(path, model)
