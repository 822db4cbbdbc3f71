"""A tiny causal language model for the language-model tests, registered only while a test runs.

The zoo's own language models live in ``src/sfpk/models`` (owned elsewhere); these tests need
only some ``forward(input_ids [B, T]) -> logits [B, T, V]`` network with prunable linear
layers, so they register this one under a test-only name with :func:`register_test_lm`,
which ``monkeypatch`` removes again after the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfpk.models import registry

__all__ = ["TEST_LM", "TinyCausalLM", "register_test_lm", "write_tokenizer_json"]

TEST_LM = "test_causal_lm"


class TinyCausalLM(nn.Module):
    """Token + position embeddings, one pre-norm causal self-attention block, a linear head."""

    def __init__(self, vocab_size: int, context: int, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, 2 * width)
        self.mlp_out = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        batch, length = ids.shape
        x = self.embed(ids) + self.position(torch.arange(length, device=ids.device))
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(batch, length, 3, self.heads, -1)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        # Explicit attention, not F.scaled_dot_product_attention: its fused CPU kernel has no
        # double backward, which GraSP's Hessian-gradient product needs.
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        future = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1)
        attended = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, -1))
        x = x + self.mlp_out(F.gelu(self.mlp_in(self.norm2(x))))
        return self.head(x)


def test_causal_lm(
    *, num_classes: int, input_shape: tuple[int, ...] | None = None, vocab_size: int = 256,
    width: int = 32,
) -> nn.Module:  # fmt: skip
    """Builder in the zoo's signature: the context length is ``input_shape[0]``."""
    context = input_shape[0] if input_shape is not None else 64
    return TinyCausalLM(vocab_size, context, width)


test_causal_lm.__test__ = False  # not a pytest test despite its name


def register_test_lm(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register :func:`test_causal_lm` as ``TEST_LM`` until the test ends; return the name."""
    monkeypatch.setitem(registry._REGISTRY, TEST_LM, test_causal_lm)
    return TEST_LM


def write_tokenizer_json(path, sentences: list[str]) -> None:
    """Train a tiny word-level ``tokenizers`` tokenizer on ``sentences`` and save it (offline)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(path))
