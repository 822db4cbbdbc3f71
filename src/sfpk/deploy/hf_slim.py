"""Slimming a transformers model for its Hugging Face export: which pruned MLP neurons and
attention heads can go while its config still describes it, and removing them.

A transformers config has one MLP width (``intermediate_size``, GPT-2's ``n_inner``) and one
head count (``num_attention_heads``, ``num_key_value_heads``) for every layer. So ``k``
groups go from every block, ``k`` being the fewest that any block can lose; the other pruned
groups stay as zeros, and a note says so.

* An MLP neuron can go when nothing reads it (its column of the second projection is zero)
  or it emits zero (a zero row and bias of a first projection: GELU / SiLU / ReLU of 0 is 0,
  and Llama's ``act(gate) * up`` is 0 when either is).
* An attention head group (a key/value head and the query heads that read it) can go when
  its columns of the output projection are zero; only where the config states ``head_dim``
  (Llama, Mistral, Qwen2, ...), since elsewhere (GPT-2, ViT) the head size is the hidden
  size divided by the head count, which fewer heads would change.

The caller checks the slim model's outputs against the masked one's
(:mod:`sfpk.deploy.hf_export`); this module only plans and cuts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..masks.groups import Block, Member

__all__ = ["WIDTH_KEYS", "SlimPlan", "apply_slim_", "plan_slim"]

# Config attributes holding the (one, shared) MLP width of a transformers model.
WIDTH_KEYS: tuple[str, ...] = ("intermediate_size", "n_inner", "ffn_dim")


@dataclass
class SlimPlan:
    """What to remove: config changes, and per block the groups that go.

    Attributes:
        updates: config attribute -> new value (``intermediate_size``, head counts).
        removed: ``(block, groups)`` pairs: the group indices of each block that go.
        changes: ``{attribute: [before, after]}``, for the export's record.
    """

    updates: dict[str, int] = field(default_factory=dict)
    removed: list[tuple[Block, list[int]]] = field(default_factory=list)
    changes: dict[str, list[int]] = field(default_factory=dict)


def _group_view(weight: Tensor, member: Member, groups: int) -> Tensor:
    """``[groups, ...]``: the entries of each group of ``member`` (rows or columns)."""
    part = weight.narrow(member.dim, member.offset, groups * member.span)
    if member.dim == 1:
        part = part.t()
    return part.reshape(groups, -1)


def _removable(work: nn.Module, block: Block, *, silent_rows: bool) -> Tensor:
    """Per group of ``block``: nothing reads it, or (``silent_rows``) it emits zero."""
    params = dict(work.named_parameters())
    ignored = torch.ones(block.groups, dtype=torch.bool)
    silent = torch.zeros(block.groups, dtype=torch.bool)
    for member in block.members:
        weight = params[member.name].detach().cpu()
        zero = (_group_view(weight, member, block.groups) == 0).all(dim=1)
        if member.dim == 1:
            ignored &= zero
            continue
        bias = params.get(member.name.rsplit(".", 1)[0] + ".bias")
        if bias is not None:
            zero &= (_group_view(bias.detach().cpu()[:, None], member, block.groups) == 0).all(1)
        silent |= zero
    return ignored | silent if silent_rows else ignored


def _width_key(config: Any, width: int) -> str | None:
    for key in WIDTH_KEYS:
        if getattr(config, key, None) == width:
            return key
    if getattr(config, "n_inner", "absent") is None and getattr(config, "n_embd", 0) * 4 == width:
        return "n_inner"  # GPT-2: n_inner None means 4 * n_embd
    return None


def _blocks(work: nn.Module, kind: str) -> list[Block]:
    from ..masks.groups import find_groups

    try:
        return list(find_groups(work, (kind,)).blocks)
    except ConfigError:
        return []


def _even_cut(
    work: nn.Module, blocks: list[Block], what: str, key: str, *, silent_rows: bool
) -> tuple[int, list[tuple[Block, list[int]]], str | None]:
    """How many groups go from every block, which, and a note on the pruned ones left."""
    free = [_removable(work, b, silent_rows=silent_rows) for b in blocks]
    counts = [int(f.sum()) for f in free]
    drop = min(counts)
    left = sum(counts) - drop * len(blocks)
    note = None
    if left:
        note = (
            f"pruned {what} per block: {sorted(set(counts))}; the config has one {key} for "
            f"every block, so {drop} go from each and {left} pruned {what} stay zeros in place "
            "(prune with scope=local for equal counts)"
        )
    removed = [
        (b, f.nonzero().flatten()[:drop].tolist()) for b, f in zip(blocks, free, strict=True)
    ]
    return drop, removed if drop else [], note


def _plan_neurons(work: nn.Module, plan: SlimPlan) -> str | None:
    blocks = _blocks(work, "neuron")
    if not blocks:
        return "no MLP blocks sfpk recognises: pruned neurons stay zeros in place"
    widths = {b.groups for b in blocks}
    key = _width_key(work.config, blocks[0].groups) if len(widths) == 1 else None
    if key is None:
        return (
            f"the MLP widths {sorted(widths)} are not the config's one width "
            f"({', '.join(WIDTH_KEYS)}): pruned neurons stay zeros in place"
        )
    drop, removed, note = _even_cut(work, blocks, "neurons", key, silent_rows=True)
    if drop:
        width = blocks[0].groups
        plan.updates[key] = width - drop
        plan.changes[key] = [width, width - drop]
        plan.removed += removed
    return note


def _plan_heads(work: nn.Module, plan: SlimPlan) -> str | None:
    config = work.config
    blocks = _blocks(work, "head")
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    why = None
    if not blocks:
        why = "no attention blocks sfpk recognises"
    elif not isinstance(head_dim, int) or not isinstance(heads, int):
        why = "the config has no head_dim (the head size is the hidden size / the head count)"
    elif any(b.groups != kv_heads for b in blocks) or heads % kv_heads:
        why = "the attention blocks do not have the config's head counts"
    elif any(m.offset != 0 for b in blocks for m in b.members):
        why = "fused q/k/v projections are not slimmed"
    if why is not None:
        return f"attention heads are not removed ({why}): pruned heads stay zeros in place"
    drop, removed, note = _even_cut(work, blocks, "heads", "num_attention_heads", silent_rows=False)
    if drop:
        share = heads // kv_heads
        plan.updates.update(num_attention_heads=heads - drop * share)
        plan.changes["num_attention_heads"] = [heads, heads - drop * share]
        if hasattr(config, "num_key_value_heads"):
            plan.updates["num_key_value_heads"] = kv_heads - drop
            plan.changes["num_key_value_heads"] = [kv_heads, kv_heads - drop]
        plan.removed += removed
    return note


def plan_slim(work: nn.Module, kinds: tuple[str, ...]) -> tuple[SlimPlan | None, list[str]]:
    """What can go from ``work`` (a transformers model, Linear layout) for ``kinds``.

    Args:
        work: the model with the masks baked in.
        kinds: ``"neuron"`` and / or ``"head"``.

    Returns:
        The plan (None when nothing can go) and the notes on what stays zeros and why.
    """
    plan, notes = SlimPlan(), []
    for kind, planner in (("head", _plan_heads), ("neuron", _plan_neurons)):
        if kind in kinds:
            note = planner(work, plan)
            if note:
                notes.append(note)
    return (plan if plan.removed else None), notes


def _sliced_linear(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.index_select(dim, index)
    out = nn.Linear(
        weight.shape[1], weight.shape[0], bias=linear.bias is not None,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    return out


@torch.no_grad()
def apply_slim_(work: nn.Module, plan: SlimPlan) -> None:
    """Remove the planned groups from ``work`` and update its config (mutates both)."""
    for block, gone in plan.removed:
        for member in block.members:
            path = member.name.rsplit(".", 1)[0]
            parent_name, _, child = path.rpartition(".")
            parent = work.get_submodule(parent_name) if parent_name else work
            linear = getattr(parent, child)
            size = linear.weight.shape[member.dim]
            dropped = {
                member.offset + g * member.span + s for g in gone for s in range(member.span)
            }
            index = torch.tensor([i for i in range(size) if i not in dropped], dtype=torch.long)
            setattr(parent, child, _sliced_linear(linear, index, member.dim))
        module = work.get_submodule(block.name)
        if block.kind == "neuron" and hasattr(module, "intermediate_size"):
            module.intermediate_size = block.groups - len(gone)
    for key, value in plan.updates.items():
        setattr(work.config, key, value)
