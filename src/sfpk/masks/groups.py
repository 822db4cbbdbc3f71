"""Coupled structured groups: attention heads and MLP neurons that span several tensors.

A filter or channel mask gates rows or columns of one tensor. Removing an attention head or
an MLP neuron instead removes matching slices of several tensors at once:

* **MLP neuron** ``j``: output row ``j`` of the first projection (``fc1``; Llama's ``gate``
  and ``up``) and input column ``j`` of the second (``fc2``; ``down``).
* **attention head** ``h``: the ``head_dim`` output rows of ``q``, ``k`` and ``v`` that belong
  to head ``h`` and the same input columns of the output projection. With grouped-query
  attention (fewer key/value heads) one group is a key/value head with every query head
  that reads it: a key/value head can only go when all of its query heads go.

The masks stay per parameter (rows: a filter-shaped mask ``[out, 1]``, columns: a
channel-shaped one ``[1, in]``), so applying, exporting and training are unchanged; a
:class:`Coupling` says which mask entries form one group, so that selection and the particle
engine decide per group and every entry of a group always holds the same value.

A :class:`Member` covers ``span`` consecutive entries per group along one dim of one
parameter, from ``offset``: group ``g`` owns entries ``offset + g * span ...
offset + (g + 1) * span - 1`` (a fused ``qkv`` weight is three members of one parameter, at
offsets ``0``, ``dim`` and ``2 dim``). A :class:`Block` is one attention module's heads or one
MLP's neurons; ``local`` scope removes the same fraction of groups from every block.
Finding the groups of a model is :mod:`sfpk.masks.group_finder`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import MaskMismatchError

__all__ = ["Block", "Coupling", "GROUP_KINDS", "Member", "group_mask_shape"]

GROUP_KINDS: tuple[str, ...] = ("head", "neuron")


def group_mask_shape(shape: Sequence[int], dim: int) -> tuple[int, ...]:
    """Mask shape of a coupled parameter: rows (``dim=0``) or columns (``dim=1``)."""
    shape = tuple(shape)
    if dim == 0:
        return (shape[0],) + (1,) * (len(shape) - 1)
    return (1, shape[1]) + (1,) * (len(shape) - 2)


@dataclass(frozen=True)
class Member:
    """``span`` consecutive entries per group along ``dim`` of parameter ``name``."""

    name: str
    dim: int
    offset: int
    span: int


@dataclass(frozen=True)
class Block:
    """The ``groups`` heads of one attention module, or the neurons of one MLP."""

    name: str
    kind: str
    groups: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Coupling:
    """Every coupled block of a mask set, in model order (see the module docstring)."""

    blocks: tuple[Block, ...]

    # -- shape of the group space -------------------------------------------------------
    @property
    def num_groups(self) -> int:
        """Groups over all blocks (the particle engine's coordinates)."""
        return sum(b.groups for b in self.blocks)

    def block_sizes(self) -> list[int]:
        """Groups per block, in block order."""
        return [b.groups for b in self.blocks]

    def names(self) -> list[str]:
        """The coupled parameters, each once, in block order."""
        seen: dict[str, None] = {}
        for block in self.blocks:
            for member in block.members:
                seen.setdefault(member.name, None)
        return list(seen)

    def dim_of(self, name: str) -> int:
        """Which dim of parameter ``name`` its mask gates (0: rows, 1: columns)."""
        for block in self.blocks:
            for member in block.members:
                if member.name == name:
                    return member.dim
        raise KeyError(name)

    # -- index maps ---------------------------------------------------------------------
    def entry_groups(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
        """Per parameter, the global group index of each of its mask's entries (int64)."""
        out = {n: torch.full((shapes[n][self.dim_of(n)],), -1, dtype=torch.long) for n in shapes}
        first = 0
        for block in self.blocks:
            groups = torch.arange(first, first + block.groups).repeat_interleave
            for member in block.members:
                stop = member.offset + block.groups * member.span
                out[member.name][member.offset : stop] = groups(member.span)
            first += block.groups
        return out

    def group_weights(self, shapes: Mapping[str, Sequence[int]]) -> Tensor:
        """``[G]`` float64: how many weights each group controls."""
        weights = torch.zeros(self.num_groups, dtype=torch.float64)
        first = 0
        for block in self.blocks:
            per_group = sum(
                m.span * math.prod(shapes[m.name]) // shapes[m.name][m.dim] for m in block.members
            )
            weights[first : first + block.groups] = float(per_group)
            first += block.groups
        return weights

    def check(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Raise MaskMismatchError unless the members tile each parameter's dim exactly once.

        ``shapes`` are the shapes of exactly the coupled parameters.
        """
        if set(shapes) != set(self.names()):
            raise MaskMismatchError(
                f"the coupled groups name {sorted(self.names())[:5]}, the masks "
                f"{sorted(shapes)[:5]}"
            )
        for block in self.blocks:
            if block.groups < 1 or not block.members:
                raise MaskMismatchError(f"coupled block {block.name!r} has no groups")
            for m in block.members:
                size = len(shapes[m.name]) > m.dim and shapes[m.name][m.dim]
                if m.dim not in (0, 1) or m.span < 1 or m.offset < 0 or not size:
                    raise MaskMismatchError(f"coupled member {m} does not fit {block.name!r}")
                if m.offset + block.groups * m.span > size:
                    raise MaskMismatchError(
                        f"coupled member {m.name!r} of {block.name!r} reaches entry "
                        f"{m.offset + block.groups * m.span} of a dim of size {size}"
                    )
        for name, owners in self.entry_groups(shapes).items():
            covered = torch.zeros_like(owners)
            for block in self.blocks:
                for m in block.members:
                    if m.name == name:
                        covered[m.offset : m.offset + block.groups * m.span] += 1
            if bool((covered != 1).any()):
                raise MaskMismatchError(
                    f"the coupled groups must cover every entry of {name!r} exactly once"
                )

    # -- files --------------------------------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        """Plain data for a mask file's JSON header."""
        return [
            {
                "name": b.name,
                "kind": b.kind,
                "groups": b.groups,
                "members": [[m.name, m.dim, m.offset, m.span] for m in b.members],
            }
            for b in self.blocks
        ]

    @classmethod
    def from_json(cls, blocks: Any) -> Coupling:
        """Inverse of :meth:`to_json`; MaskMismatchError on malformed data."""
        try:
            return cls(
                tuple(
                    Block(
                        str(b["name"]),
                        str(b["kind"]),
                        int(b["groups"]),
                        tuple(
                            Member(str(n), int(d), int(o), int(s)) for n, d, o, s in b["members"]
                        ),
                    )
                    for b in blocks
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MaskMismatchError(f"malformed coupled-group table: {error}") from None
