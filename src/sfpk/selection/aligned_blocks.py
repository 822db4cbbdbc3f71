"""The blocks of a ``round_to`` mask set (:mod:`sfpk.selection.aligned`) and what they keep.

A block is one mask tensor of filter/channel masks (biases that follow their layer's filters
join those filters) or one coupled channel group; this module resolves ``round_to``, finds
the blocks and their groups, the local rounded count of a block, and the groups each block
of finished masks keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, SparsityCheckError, check_number
from ..masks.core import ALIGNED_STRUCTURES, Masks, removal_count
from .weight_budget import block_starts

__all__ = [
    "ALIGNED_STRUCTURES",
    "AlignedBlock",
    "aligned_blocks",
    "aligned_keep_count",
    "bias_followers",
    "block_kept",
    "check_round_to",
    "entry_groups",
    "group_alive",
    "is_aligned",
]


def check_round_to(round_to: Any, structure: str, *, name: str = "round_to") -> int | None:
    """``round_to`` resolved (None, or an int >= 1), else ConfigError naming it ``name``.

    Raises:
        ConfigError: not a whole number >= 1 (a bool, a string, 2.5, 0), or a value above 1
            with a structure other than filter, channel or coupled.
    """
    if round_to is None:
        return None
    value = check_number(name, round_to, integer=True)
    if value < 1:
        raise ConfigError(f"{name}={round_to!r} must be >= 1 (None or 1: no rounding)")
    if value > 1 and structure not in ALIGNED_STRUCTURES:
        raise ConfigError(
            f"{name}={value} keeps a multiple of {value} filters/channels per layer and needs "
            f"structure {', '.join(ALIGNED_STRUCTURES)}, not structure={structure!r}"
        )
    return value


def is_aligned(round_to: int | None) -> bool:
    """Whether ``round_to`` asks for rounding (None and 1 do not)."""
    return round_to is not None and round_to > 1


@dataclass(frozen=True)
class AlignedBlock:
    """One block of a mask set: ``groups`` filters/channels of ``weight`` weights each
    (a filter's weight counts its bias entry when that bias follows it)."""

    name: str
    groups: int
    weight: int
    kind: str


def bias_followers(masks: Masks) -> dict[str, str]:
    """1-D masks that follow a filter mask's decision: bias name -> weight name.

    With ``include_bias=True`` a layer's bias gets a mask of its own; under ``round_to``
    its entry ``i`` is kept exactly when filter ``i`` of the layer is (as ``tied_biases``
    do for biases without a mask), so it is part of that filter, not a block of its own.

    Raises:
        ConfigError: a 1-D mask with no filter mask of its layer to follow (channel
            masks, a bias whose weight is excluded, a selected BatchNorm weight).
    """
    if masks.coupling is not None:
        return {}
    followers, orphans = {}, []
    for name in masks:
        if len(masks.shapes[name]) != 1:
            continue
        weight = f"{name.rsplit('.', 1)[0]}.weight" if "." in name else "weight"
        shape = masks.shapes.get(weight)
        if (
            masks.structure == "filter"
            and shape
            and len(shape) > 1
            and shape[0] == masks.shapes[name][0]
        ):
            followers[name] = weight
        else:
            orphans.append(name)
    if orphans:
        raise ConfigError(
            f"round_to aligns the widths of layers; the 1-D mask(s) {', '.join(orphans[:5])} "
            f"have no {'filter' if masks.structure == 'filter' else 'output-filter'} mask of "
            "their layer to follow (structure="
            f"{masks.structure!r}); pass include_bias=False or exclude them"
        )
    return followers


def aligned_blocks(masks: Masks) -> list[AlignedBlock]:
    """The blocks of ``masks`` in flat order: coupled groups, else one per mask tensor
    (biases that follow their layer's filters are part of those filters, not blocks)."""
    if masks.coupling is not None:
        weights = masks.coupling.group_weights(masks.shapes)
        starts = block_starts(masks.coupling.block_sizes())
        return [
            AlignedBlock(b.name, b.groups, int(weights[start]), f"{b.kind}s")
            for b, start in zip(masks.coupling.blocks, starts, strict=True)
        ]
    followers = bias_followers(masks)
    led = set(followers.values())
    kind = "channels" if masks.structure == "channel" else "filters"
    return [
        AlignedBlock(n, masks[n].numel(), masks.weights_per_entry(n) + int(n in led), kind)
        for n in masks
        if n not in followers
    ]


def entry_groups(masks: Masks) -> tuple[Tensor, list[int], Tensor]:
    """For filter/channel ``masks``: the group of every flat mask entry (a following bias
    entry shares its filter's), the groups per block, and the weights of every group."""
    followers = bias_followers(masks)
    blocks = aligned_blocks(masks)
    first = dict(
        zip([b.name for b in blocks], block_starts([b.groups for b in blocks]), strict=True)
    )
    index = torch.cat([torch.arange(masks[n].numel()) + first[followers.get(n, n)] for n in masks])
    weights = torch.cat([torch.full((b.groups,), b.weight, dtype=torch.float64) for b in blocks])
    return index, [b.groups for b in blocks], weights


def aligned_keep_count(groups: int, sparsity: float, round_to: int) -> int:
    """Groups a block keeps under ``local`` scope: ``groups - floor(sparsity * groups)``
    moved to the nearest count it may keep (a multiple of ``round_to`` in
    ``[round_to, groups]``, or ``groups``); ties keep more."""
    if groups <= round_to:
        return groups
    wanted = groups - removal_count(groups, sparsity)
    below = wanted // round_to * round_to
    allowed = [c for c in (below, below + round_to) if round_to <= c <= groups] + [groups]
    return min(allowed, key=lambda c: (abs(c - wanted), -c))


def group_alive(masks: Masks) -> Tensor:
    """``[groups]`` bool: which coupled groups ``masks`` keep.

    Raises:
        SparsityCheckError: a group is only partly removed.
    """
    coupling = masks.coupling
    assert coupling is not None
    owners = coupling.entry_groups(masks.shapes)
    index = torch.cat([owners[n] for n in masks])
    flat = torch.cat([(masks[n] != 0).reshape(-1).to("cpu", torch.float64) for n in masks])
    kept = torch.zeros(coupling.num_groups, dtype=torch.float64).index_add_(0, index, flat)
    members = torch.zeros_like(kept).index_add_(0, index, torch.ones_like(flat))
    if bool(((kept != 0) & (kept != members)).any()):
        raise SparsityCheckError("a coupled head/neuron group is only partly removed")
    return kept != 0


def block_kept(masks: Masks) -> list[int]:
    """Groups every block of :func:`aligned_blocks` keeps."""
    if masks.coupling is None:
        followers = bias_followers(masks)
        return [int(torch.count_nonzero(masks[n])) for n in masks if n not in followers]
    alive = group_alive(masks)
    return [int(a.sum()) for a in alive.split(masks.coupling.block_sizes())]
