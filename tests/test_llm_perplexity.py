"""Perplexity as the LLM pruning papers measure it (sfpk.llm.perplexity)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sfpk.errors import ConfigError, DataError
from sfpk.llm import perplexity
from sfpk.models import create


class _Bigram(nn.Module):
    """logits[b, t] = table[ids[b, t]]: next-token probabilities computable by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def test_matches_a_hand_computation_over_non_overlapping_windows():
    """exp(mean NLL) over the seqlen-1 predictions of each full window; the tail is dropped."""
    table = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 3.0, 0.5]])
    tokens = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2])  # 11 tokens: 2 windows of 4
    nll = []
    for window in (tokens[0:4], tokens[4:8]):
        for prev, nxt in zip(window[:-1].tolist(), window[1:].tolist(), strict=True):
            row = table[prev].tolist()
            nll.append(-(row[nxt] - math.log(sum(math.exp(v) for v in row))))
    expected = math.exp(sum(nll) / len(nll))
    got = perplexity(_Bigram(table), tokens, seqlen=4, batch_size=1)
    assert got == pytest.approx(expected, rel=1e-6)


def test_batch_size_does_not_change_the_result():
    """Batching windows is an implementation detail: the figure must not depend on it."""
    torch.manual_seed(0)
    model = create("gpt_tiny", num_classes=32, context=8, dim=16, depth=1, num_heads=2)
    tokens = torch.randint(0, 32, (100,))
    one = perplexity(model, tokens, seqlen=8, batch_size=1)
    assert perplexity(model, tokens, seqlen=8, batch_size=5) == pytest.approx(one, rel=1e-5)


def test_hf_causal_lm_gives_the_same_value_as_its_loss():
    """On an HF causal LM the figure equals exp of the model's own mean shifted loss."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 32, (8,))
    with torch.no_grad():
        loss = model(input_ids=tokens[None], labels=tokens[None]).loss
    assert perplexity(model, tokens, seqlen=8) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_fewer_tokens_than_one_window_and_long_windows_are_refused():
    """No window, or windows beyond the model's positions, must fail with the numbers."""
    model = create("gpt_tiny", num_classes=32, context=8, dim=16, depth=1, num_heads=2)
    with pytest.raises(DataError, match=r"5 tokens, fewer than seqlen=8"):
        perplexity(model, torch.zeros(5, dtype=torch.long), seqlen=8)
    with pytest.raises(ConfigError, match=r"seqlen=9.*8 positions"):
        perplexity(model, torch.zeros(50, dtype=torch.long), seqlen=9)
