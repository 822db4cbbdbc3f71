"""Tests of sfpk.losses: the next-token loss by hand, the task table, perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sfpk.errors import SfpkError, UnknownNameError
from sfpk.losses import (
    TASKS,
    flatten_for_task,
    next_token_loss,
    perplexity,
    task_loss,
)


def test_next_token_loss_matches_a_hand_computation():
    """Mean of -log softmax(logits)[target] over every (sequence, position) pair."""
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
        ]
    )  # [B=2, T=2, V=3]
    targets = torch.tensor([[0, 2], [1, 2]])
    by_hand = [
        -(2.0 - math.log(math.exp(2) + 2)),
        -(0.0 - math.log(math.e + 2)),
        -(0.0 - math.log(3.0)),
        -(3.0 - math.log(math.e + math.e**2 + math.e**3)),
    ]
    assert next_token_loss(logits, targets).item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    assert next_token_loss(logits, targets, reduction="sum").item() == pytest.approx(
        sum(by_hand), rel=1e-6
    )
    per_token = next_token_loss(logits, targets, reduction="none")
    assert per_token.tolist() == pytest.approx(by_hand, rel=1e-6)


def test_next_token_loss_of_uniform_logits_is_log_vocab():
    """A model that knows nothing has perplexity exactly V: exp(loss) = V."""
    loss = next_token_loss(torch.zeros(3, 5, 256), torch.randint(0, 256, (3, 5)))
    assert perplexity(loss.item()) == pytest.approx(256.0, rel=1e-5)


def test_next_token_loss_passes_label_smoothing_through():
    """Training with label smoothing uses the same flattening as evaluation."""
    logits, targets = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    expected = F.cross_entropy(logits.reshape(8, 7), targets.reshape(8), label_smoothing=0.1)
    assert torch.equal(next_token_loss(logits, targets, label_smoothing=0.1), expected)


@pytest.mark.parametrize(
    "logits_shape, targets_shape", [((2, 4), (2,)), ((2, 4, 7), (2, 5)), ((2, 4, 7), (8,))]
)
def test_next_token_loss_rejects_shapes_that_are_not_a_language_models(logits_shape, targets_shape):
    """A classifier's [B, C] output (or a misaligned shift) must fail loudly, not broadcast."""
    with pytest.raises(SfpkError, match=r"\[B, T, V\]"):
        next_token_loss(torch.zeros(logits_shape), torch.zeros(targets_shape, dtype=torch.long))


def test_classification_loss_is_plain_cross_entropy():
    """Image runs must stay bit-identical: the classification loss is F.cross_entropy itself."""
    assert task_loss("classification") is F.cross_entropy
    assert task_loss("language_model") is next_token_loss
    logits, targets = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert flatten_for_task("classification", logits, targets) == (logits, targets)


def test_language_model_predictions_flatten_to_one_row_per_token():
    """Metrics count tokens: [B, T, V] becomes [B*T, V] in row-major order."""
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    flat_logits, flat_targets = flatten_for_task("language_model", logits, targets)
    assert flat_logits.shape == (6, 5) and torch.equal(flat_logits[4], logits[1, 1])
    assert torch.equal(flat_targets, targets.reshape(6))


def test_unknown_task_names_the_choices():
    """A misspelt task lists the three there are."""
    with pytest.raises(UnknownNameError, match="language_model"):
        task_loss("lm")
    assert TASKS == ("classification", "language_model", "denoise")


def test_perplexity_overflows_to_infinity():
    """A diverged model reports inf, never raises while writing the summary."""
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
