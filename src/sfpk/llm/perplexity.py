"""Perplexity of a causal LM on held-out text, as the LLM pruning papers measure it.

The protocol of SparseGPT and Wanda (WikiText-2 test, C4 validation): the text is
tokenized once and concatenated into one stream of ``N`` tokens, cut into
``floor(N / seqlen)`` non-overlapping windows (the tail is dropped), and each window is
scored independently (no context carried over). Perplexity is the exponential of the mean
next-token negative log-likelihood over every predicted token: ``seqlen - 1`` per window
(the first token of a window has no prediction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, NonFiniteError, check_number
from .blocks import find_decoder, max_positions

__all__ = ["perplexity"]


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    """``[B, T, V]`` logits of an sfpk LM (returns a tensor) or an HF causal LM."""
    if getattr(getattr(model, "config", None), "model_type", None) is not None:
        return model(input_ids=ids, use_cache=False).logits
    out = model(ids)
    return out if isinstance(out, Tensor) else out.logits


def _check_positions(model: nn.Module, seqlen: int) -> None:
    """A ConfigError if ``seqlen`` exceeds the positions of a recognised decoder; models
    without a recognisable block list (any other LM) are not checked."""
    try:
        limit = max_positions(find_decoder(model))
    except ConfigError:
        return
    if limit is not None and seqlen > limit:
        raise ConfigError(
            f"seqlen={seqlen} is longer than the {limit} positions of {type(model).__name__}; "
            f"choose seqlen <= {limit}"
        )


@torch.no_grad()
def perplexity(model: nn.Module, tokens: Tensor, *, seqlen: int, batch_size: int = 8) -> float:
    """``exp(mean NLL)`` of ``model`` over the non-overlapping ``seqlen`` windows of ``tokens``.

    Runs in eval mode (restored afterwards) on the model's device.

    Args:
        model: an sfpk LM (``forward(input_ids) -> logits [B, T, V]``, e.g. ``gpt_tiny`` or
            an ``hf:`` model) or an HF causal LM.
        tokens: the test text as one flat ``LongTensor [N]``.
        seqlen: tokens per window (at most the model's positions).
        batch_size: windows per forward.

    Raises:
        ConfigError: a bad ``seqlen``/``batch_size``/``tokens`` or a seqlen above the
            model's positions.
        DataError: fewer than ``seqlen`` tokens (not one window).
        NonFiniteError: the mean NLL is NaN or infinite.

    Example:
        >>> perplexity(model, test_ids, seqlen=1024)  # doctest: +SKIP
        29.9
    """
    seqlen = check_number("seqlen", seqlen, integer=True)
    _check_positions(model, seqlen)
    if seqlen < 2:
        raise ConfigError(f"seqlen={seqlen} must be >= 2 (one predicted token per window)")
    batch_size = check_number("batch_size", batch_size, integer=True)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if tokens.dim() != 1 or tokens.is_floating_point():
        raise ConfigError(
            f"tokens must be a 1-D tensor of token ids, got {tokens.dtype} of shape "
            f"{tuple(tokens.shape)}"
        )
    windows = tokens.numel() // seqlen
    if windows < 1:
        raise DataError(f"the text has {tokens.numel()} tokens, fewer than seqlen={seqlen}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    data = tokens[: windows * seqlen].long().view(windows, seqlen)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in data.split(batch_size):
            batch = batch.to(device)
            logits = _logits(model, batch)[:, :-1].float()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    mean = total / count
    if not math.isfinite(mean):
        raise NonFiniteError(f"the mean next-token NLL is {mean} (the model outputs NaN/inf)")
    return math.exp(mean)
