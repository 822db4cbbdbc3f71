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

**Finding the groups** of a model (:func:`find_groups`) reads module attributes, not class
names, so it covers every model that names its projections one of the common ways:

====================  ================================  =========================================
family                attention (heads)                 MLP (neurons)
====================  ================================  =========================================
sfpk zoo              ``attn.{q,k,v,o}``                ``mlp.fc1 -> mlp.fc2``
Llama, Mistral, Qwen  ``self_attn.{q,k,v,o}_proj``      ``mlp.{gate,up}_proj -> mlp.down_proj``
                      (grouped-query attention too)
GPT-2                 fused ``attn.c_attn``,            ``mlp.c_fc -> mlp.c_proj``
                      ``attn.c_proj``
ViT, DeiT, Swin,      ``attention.{attention,self}.``   ``intermediate.dense -> output.dense``
BERT                  ``{query,key,value}``,
                      ``attention.output.dense``
====================  ================================  =========================================

Head counts come from the attention module (``num_heads``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``) or its ``config``. A model can also declare its groups
itself with ``sfpk_groups(kinds) -> Coupling``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, MaskMismatchError

__all__ = ["Block", "Coupling", "GROUP_KINDS", "Member", "group_mask_shape", "find_groups"]

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


_MLP_PAIRS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("fc1",), "fc2"),
    (("gate_proj", "up_proj"), "down_proj"),
    (("c_fc",), "c_proj"),
)
_SEPARATE_QKV: tuple[tuple[tuple[str, str, str], str | None], ...] = (
    (("q", "k", "v"), "o"),
    (("q_proj", "k_proj", "v_proj"), "o_proj"),
    (("query", "key", "value"), None),  # HF encoders: the output dense is a sibling's child
)


def _linear(module: nn.Module, path: str) -> nn.Linear | None:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module if isinstance(module, nn.Linear) else None


def _count(module: nn.Module, *names: str) -> int | None:
    """The first positive integer attribute among ``names``, on the module or its config."""
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _mlp_block(prefix: str, module: nn.Module) -> Block | None:
    for firsts, second in _MLP_PAIRS:
        ins = [_linear(module, f) for f in firsts]
        out = _linear(module, second)
        if out is None or any(i is None for i in ins):
            continue
        hidden = out.in_features
        if any(i.out_features != hidden for i in ins):  # type: ignore[union-attr]
            continue
        members = [Member(_join(prefix, f"{f}.weight"), 0, 0, 1) for f in firsts]
        members.append(Member(_join(prefix, f"{second}.weight"), 1, 0, 1))
        return Block(prefix, "neuron", hidden, tuple(members))
    first, second = _linear(module, "intermediate.dense"), _linear(module, "output.dense")
    if first is not None and second is not None and second.in_features == first.out_features:
        return Block(
            prefix,
            "neuron",
            first.out_features,
            (
                Member(_join(prefix, "intermediate.dense.weight"), 0, 0, 1),
                Member(_join(prefix, "output.dense.weight"), 1, 0, 1),
            ),
        )
    return None


def _head_block(prefix: str, module: nn.Module, model: nn.Module) -> Block | None:
    heads = _count(module, "num_heads", "num_attention_heads", "n_head")
    fused, proj = _linear(module, "c_attn"), _linear(module, "c_proj")
    if fused is not None and proj is not None and heads:  # GPT-2: [q; k; v] rows
        width = proj.in_features
        if fused.out_features != 3 * width or width % heads:
            return None
        span = width // heads
        members = [Member(_join(prefix, "c_attn.weight"), 0, i * width, span) for i in range(3)]
        members.append(Member(_join(prefix, "c_proj.weight"), 1, 0, span))
        return Block(prefix, "head", heads, tuple(members))
    for names, out_name in _SEPARATE_QKV:
        q, k, v = (_linear(module, n) for n in names)
        if q is None or k is None or v is None or not heads:
            continue
        if out_name is not None:
            out_path, out = _join(prefix, out_name), _linear(module, out_name)
        else:  # ViTAttention.attention / SwinAttention.self -> its parent's output.dense
            parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
            out_path = _join(parent, "output.dense")
            out = _linear(model.get_submodule(parent) if parent else model, "output.dense")
        if out is None:
            return None
        head_dim = _count(module, "head_dim", "attention_head_size") or q.out_features // heads
        kv_heads = _count(module, "num_key_value_heads") or heads
        if q.out_features != heads * head_dim or heads % kv_heads:
            return None
        if k.out_features != kv_heads * head_dim or v.out_features != k.out_features:
            return None
        if out.in_features != q.out_features:
            return None
        share = heads // kv_heads  # query heads per key/value head
        members = (
            Member(_join(prefix, f"{names[0]}.weight"), 0, 0, share * head_dim),
            Member(_join(prefix, f"{names[1]}.weight"), 0, 0, head_dim),
            Member(_join(prefix, f"{names[2]}.weight"), 0, 0, head_dim),
            Member(f"{out_path}.weight", 1, 0, share * head_dim),
        )
        return Block(prefix, "head", kv_heads, members)
    return None


def _blocks(model: nn.Module, kinds: Sequence[str]) -> Iterable[Block]:
    for prefix, module in model.named_modules():
        if "head" in kinds:
            block = _head_block(prefix, module, model)
            if block is not None:
                yield block
        if "neuron" in kinds:
            block = _mlp_block(prefix, module)
            if block is not None:
                yield block


def find_groups(
    model: nn.Module, kinds: Sequence[str], keep: Callable[[str], bool] | None = None
) -> Coupling:
    """The coupled ``kinds`` (``"head"``, ``"neuron"``) of ``model``, in model order.

    Args:
        model: any module; one with ``sfpk_groups(kinds)`` answers for itself.
        kinds: which group kinds to find.
        keep: which parameter names may be pruned (include/exclude); a block with any
            member outside it is left out whole, since its groups could only be half removed.

    Raises:
        ConfigError: no group of those kinds was found (the message names the conventions).
    """
    declared = getattr(model, "sfpk_groups", None)
    if callable(declared):
        coupling: Coupling = declared(tuple(kinds))
        blocks = list(coupling.blocks)
    else:
        blocks = list(_blocks(model, kinds))
    if keep is not None:
        blocks = [b for b in blocks if all(keep(m.name) for m in b.members)]
    if not blocks:
        raise ConfigError(
            f"found no {' or '.join(kinds)} groups in {type(model).__name__}: structured "
            "head/neuron pruning needs attention modules with q/k/v/o (or q_proj.., "
            "query/key/value, GPT-2's c_attn) and MLPs with fc1/fc2 (or gate/up/down, c_fc/"
            "c_proj, intermediate/output.dense), all prunable; or a model method "
            "sfpk_groups(kinds) returning a sfpk.masks.groups.Coupling"
        )
    return Coupling(tuple(blocks))
