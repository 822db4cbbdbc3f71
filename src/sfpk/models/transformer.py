"""Two small native transformers: ``gpt_tiny`` (causal LM) and ``vit_tiny`` (ViT classifier).

No ``transformers`` dependency: plain ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and
one patch-embedding conv. Each block is pre-norm (GPT-2, ViT):
``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``, with the names

* ``blocks.N.attn.{q,k,v,o}``: separate projections ``[dim, dim]`` (not
  ``nn.MultiheadAttention``, whose fused ``in_proj_weight`` is no Linear, so the default
  prunable rule would not see it). Head ``h`` owns output rows
  ``h * head_dim : (h + 1) * head_dim`` of ``q``, ``k`` and ``v`` and the same input columns
  of ``o``; ``attn.num_heads`` and ``attn.head_dim`` say how many and how wide.
* ``blocks.N.mlp.{fc1,fc2}``: ``dim -> hidden -> dim`` with GELU; MLP neuron ``j`` is output
  row ``j`` of ``fc1`` and input column ``j`` of ``fc2``.

Attention is written out, ``softmax(q k^T / sqrt(head_dim)) v``, rather than calling
``F.scaled_dot_product_attention``: torch's fused CPU kernel has no double backward, which
GraSP's Hessian-gradient product needs.

Both models declare ``sfpk_default_exclude`` (:func:`sfpk.masks.prunable.prunable_parameters`): the
embeddings, the norms and the LM head stay dense by default; every attention and MLP Linear,
and ``vit_tiny``'s classifier, is prunable. ``sfpk_task`` names the kind of output
(``"language_model"``: ``[B, T, V]`` logits, ``"classification"``: ``[B, C]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import register_model

__all__ = ["Attention", "MLPBlock", "Block", "GPTTiny", "ViTTiny", "gpt_tiny", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``o`` Linear layers."""

    def __init__(self, dim: int, num_heads: int, *, causal: bool) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"num_heads={num_heads!r} must be >= 1 and divide dim={dim!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape

        def heads(t: Tensor) -> Tensor:  # [B, T, D] -> [B, heads, T, head_dim]
            return t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if self.causal:
            future = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(batch, tokens, dim))


class MLPBlock(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``dim -> hidden -> dim``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each inside a residual connection."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, causal=causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, max(1, round(dim * mlp_ratio)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, causal: bool) -> nn.ModuleList:
    if dim < 1 or depth < 1 or mlp_ratio <= 0:
        raise ConfigError(
            f"dim={dim!r} and depth={depth!r} must be >= 1 and mlp_ratio={mlp_ratio!r} > 0"
        )
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, causal=causal) for _ in range(depth))


def _init_gpt(model: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) for Linear and Embedding weights, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class GPTTiny(nn.Module):
    """Decoder-only causal LM: ``forward(input_ids [B, T]) -> logits [B, T, vocab_size]``.

    Token and learned position embeddings, pre-norm causal blocks, a final LayerNorm and an
    untied, bias-free LM head. A floating-point input (SynFlow's all-ones probe) is read as
    token ids, so the probe is token 1 at every position.
    """

    sfpk_task = "language_model"
    sfpk_default_exclude = ("tok_embed.*", "pos_embed.*", "blocks.*.norm*", "norm.*", "head.*")

    def __init__(
        self,
        vocab_size: int,
        *,
        context: int = 64,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or context < 1:
            raise ConfigError(f"vocab_size={vocab_size!r} and context={context!r} must be >= 1")
        self.context = context
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(context, dim)
        self.blocks = _blocks(dim, depth, num_heads, mlp_ratio, causal=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        _init_gpt(self)

    def forward(self, input_ids: Tensor) -> Tensor:
        ids = input_ids.long() if input_ids.is_floating_point() else input_ids
        tokens = ids.shape[1]
        if tokens > self.context:
            raise ConfigError(
                f"a sequence of {tokens} tokens is longer than gpt_tiny's context={self.context} "
                "(model option context)"
            )
        positions = torch.arange(tokens, device=ids.device)
        x = self.tok_embed(ids) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _auto_patch(sizes: Sequence[int]) -> int:
    """The smallest patch side dividing every size that gives at most sqrt(positions) patches.

    ViT-B/16 meets the rule on 224x224 images (196 <= 224 patches); 8x8 digits get 4x4
    patches (4 patches), 40-long MNIST-1D signals patches of 8 (5 patches). Fewer, larger
    patches train much faster on these tiny inputs than 2x2 patches do.
    """
    limit = math.sqrt(math.prod(sizes))
    divisors = [p for p in range(1, min(sizes) + 1) if all(s % p == 0 for s in sizes)]
    for patch in divisors:
        if math.prod(s // patch for s in sizes) <= limit:
            return patch
    return divisors[-1]


class ViTTiny(nn.Module):
    """A small ViT on images ``(C, H, W)`` or signals ``(L,)`` / ``(C, L)``.

    Non-overlapping patches (a Conv2d, or a Conv1d for signals, with kernel = stride = patch),
    a [CLS] token, learned position embeddings, pre-norm blocks, a final LayerNorm and a
    linear classifier on the [CLS] token.

    Args:
        input_shape: one sample's shape; ``(L,)`` is read as one channel.
        num_classes: output classes.
        patch_size: patch side (length for signals); None picks the smallest that divides
            the input and gives at most sqrt(H * W) (or sqrt(L)) patches: 8x8 digits get
            4x4 patches, 40-long MNIST-1D signals patches of 8.
        dim, depth, num_heads, mlp_ratio: width, blocks, heads and MLP width / dim.
    """

    sfpk_task = "classification"
    sfpk_default_exclude = ("patch_embed.*", "cls_token", "pos_embed", "blocks.*.norm*", "norm.*")

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        patch_size: int | None = None,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (1, 2, 3):
            raise ConfigError(f"vit_tiny needs input_shape (L,), (C, L) or (C, H, W), got {shape}")
        self.add_channel = len(shape) == 1  # [B, L] signals become [B, 1, L]
        channels, sizes = (1, shape) if len(shape) == 1 else (shape[0], shape[1:])
        patch = patch_size if patch_size is not None else _auto_patch(sizes)
        if patch < 1 or any(s % patch for s in sizes):
            raise ConfigError(f"patch_size={patch!r} must be >= 1 and divide the input {sizes}")
        conv = nn.Conv2d if len(sizes) == 2 else nn.Conv1d
        self.patch_size = patch
        self.patch_embed = conv(channels, dim, patch, stride=patch)
        num_patches = math.prod(s // patch for s in sizes)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = _blocks(dim, depth, num_heads, mlp_ratio, causal=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        _init_gpt(self)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if self.add_channel and x.dim() == 2:
            x = x.unsqueeze(1)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, dim]
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


@register_model
def gpt_tiny(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    vocab_size: int | None = None,
    context: int | None = None,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
) -> nn.Module:
    """Causal LM (2 blocks, dim 64, 4 heads); vocabulary = ``num_classes``.

    ``num_classes`` is the number of token ids the data uses; ``vocab_size`` may be larger.
    ``input_shape`` is ``(T,)``, the sequence length, at most ``context`` (default: T, or
    64 without an input shape).
    """
    if context is None:
        context = input_shape[0] if input_shape is not None and len(input_shape) == 1 else 64
    vocab = num_classes if vocab_size is None else vocab_size
    if num_classes > vocab:
        raise ConfigError(f"the data has {num_classes} token ids but vocab_size={vocab_size!r}")
    if input_shape is not None and (len(input_shape) != 1 or input_shape[0] > context):
        raise ConfigError(
            f"gpt_tiny needs input_shape (T,) with T <= context={context}, got {input_shape}"
        )
    return GPTTiny(vocab, context=context, dim=dim, depth=depth, num_heads=num_heads)


@register_model
def vit_tiny(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    patch_size: int | None = None,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
) -> nn.Module:
    """Small ViT (2 blocks, dim 64, 4 heads) for images or 1-D signals (default (1, 8, 8))."""
    shape = tuple(input_shape or (1, 8, 8))
    return ViTTiny(
        shape, num_classes, patch_size=patch_size, dim=dim, depth=depth, num_heads=num_heads
    )
