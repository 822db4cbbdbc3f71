"""How :class:`sfpk.masks.core.Masks` are first made for a model: all-ones masks of a structure.

:class:`MaskConstruction` holds the constructors :meth:`~MaskConstruction.ones` and
:meth:`~MaskConstruction.coupled_ones` (a mixin of :class:`~sfpk.masks.core.Masks`, which is
what ``cls`` is): which parameters get masks (:func:`sfpk.masks.prunable.prunable_parameters`),
which of them can carry a mask of the structure, and, for head/neuron structures, the
coupled groups found in the model (:mod:`sfpk.masks.group_finder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

import torch
from torch import nn

from ..errors import ConfigError
from .group_finder import find_groups
from .groups import Coupling, group_mask_shape
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

__all__ = ["MaskConstruction"]


class MaskConstruction:
    """The constructors of :class:`sfpk.masks.core.Masks` from a model (its mixin)."""

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
    ) -> Self:
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
    ) -> Self:
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
    ) -> Self:
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
