"""Find the attention heads and MLP neurons of a transformer (see :mod:`sfpk.masks.groups`).

The finder reads module attributes, not class names, so it covers every model that names
its projections one of the common ways:

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

from collections.abc import Callable, Iterable, Sequence

from torch import nn

from ..errors import ConfigError
from .groups import Block, Coupling, Member

__all__ = ["find_groups"]

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
