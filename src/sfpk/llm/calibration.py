"""Calibration sequences for layer-wise pruning: reproducible random windows of a token stream.

The LLM pruning papers (SparseGPT, Wanda) calibrate on 128 windows of 2048 tokens drawn at
random offsets from the training text (C4), tokenized once and concatenated. That is
:func:`sample_calibration`; :func:`check_seqlen` refuses windows longer than the model's
position table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, check_number
from .blocks import find_decoder, max_positions

__all__ = ["sample_calibration", "check_seqlen"]


def sample_calibration(tokens: Tensor, *, num_samples: int, seqlen: int, seed: int) -> Tensor:
    """``num_samples`` windows of ``seqlen`` tokens at random offsets of ``tokens``.

    Offsets are drawn uniformly (with replacement, as SparseGPT and Wanda do) from a
    ``torch.Generator`` seeded with ``seed``, so the same call returns the same windows.
    The text must hold at least ``num_samples * seqlen`` tokens (windows may overlap, but
    a text smaller than the calibration asked for is refused).

    Args:
        tokens: the training text as one flat ``LongTensor [N]`` of token ids.
        num_samples: how many windows (S); the papers use 128.
        seqlen: tokens per window (L).
        seed: seed of the offsets.

    Returns:
        ``LongTensor [num_samples, seqlen]``.

    Raises:
        ConfigError: ``num_samples`` or ``seqlen`` below 1, or ``tokens`` not 1-D integers.
        DataError: the stream has fewer than ``num_samples * seqlen`` tokens, so it cannot
            give the calibration asked for (the message names both numbers).

    Example:
        >>> windows = sample_calibration(train_ids, num_samples=128, seqlen=2048, seed=0)
    """
    num_samples = check_number("num_samples", num_samples, integer=True)
    seqlen = check_number("seqlen", seqlen, integer=True)
    if num_samples < 1 or seqlen < 1:
        raise ConfigError(f"num_samples={num_samples} and seqlen={seqlen} must be >= 1")
    if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex():
        raise ConfigError(
            f"tokens must be a 1-D tensor of token ids, got {tokens.dtype} of shape "
            f"{tuple(tokens.shape)}"
        )
    asked = num_samples * seqlen
    if tokens.numel() < asked:
        raise DataError(
            f"the calibration text has {tokens.numel()} tokens, fewer than the "
            f"{num_samples} samples x {seqlen} tokens = {asked} asked for"
        )
    available = tokens.numel() - seqlen + 1
    generator = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, available, (num_samples,), generator=generator)
    offsets = starts[:, None] + torch.arange(seqlen)[None, :]
    return tokens.long()[offsets]


def check_calibration(calibration: Tensor, *, num_samples: int | None = None) -> Tensor:
    """``calibration`` if it is a ``LongTensor [S, L]`` with ``S >= num_samples``, else raise.

    Raises:
        ConfigError: not a 2-D integer tensor, or empty.
        DataError: fewer sequences than ``num_samples`` (the message names both numbers).
    """
    if calibration.dim() != 2 or calibration.is_floating_point() or calibration.is_complex():
        raise ConfigError(
            f"calibration must be a LongTensor [num_samples, seqlen] of token ids, got "
            f"{calibration.dtype} of shape {tuple(calibration.shape)}"
        )
    if calibration.numel() == 0:
        raise ConfigError(f"calibration of shape {tuple(calibration.shape)} is empty")
    if num_samples is not None and calibration.shape[0] < num_samples:
        raise DataError(
            f"the calibration set has {calibration.shape[0]} sequences, fewer than the "
            f"{num_samples} asked for"
        )
    return calibration


def check_seqlen(model: nn.Module, seqlen: int) -> int:
    """``seqlen`` if the model takes sequences that long, else a ConfigError naming both.

    Raises:
        ConfigError: ``seqlen`` below 1 or above the model's positions (``n_positions`` /
            ``max_position_embeddings`` of an HF config, ``context`` of ``gpt_tiny``), or a
            model without a recognisable block list.
    """
    seqlen = check_number("seqlen", seqlen, integer=True)
    if seqlen < 1:
        raise ConfigError(f"seqlen={seqlen} must be >= 1")
    limit = max_positions(find_decoder(model))
    if limit is not None and seqlen > limit:
        raise ConfigError(
            f"seqlen={seqlen} is longer than the {limit} positions of {type(model).__name__}; "
            f"choose seqlen <= {limit}"
        )
    return seqlen
