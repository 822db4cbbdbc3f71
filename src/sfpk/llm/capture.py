"""The inputs of a decoder's first block, and calling a block on recorded inputs.

A forward pre-hook (with kwargs) on block 0 records everything the model passes to it:
the hidden states and the rest (attention mask, position ids, rotary position embeddings,
cache flags), then raises a private exception that stops the forward. Any block can then
be called with those same keyword arguments on new hidden states, which is how
:mod:`sfpk.llm.sequential` feeds block ``k`` the outputs of the pruned block ``k - 1``.
Caches are switched off: a ``Cache`` argument is replaced by None and ``use_cache`` by
False, so no block accumulates keys and values across calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SfpkError
from .blocks import Decoder

__all__ = ["BlockInputs", "capture_inputs", "run_block"]

_HIDDEN = "hidden_states"


class _Captured(Exception):
    """Raised by the pre-hook once block 0's inputs are recorded (stops the forward)."""


@dataclass
class BlockInputs:
    """One calibration batch's inputs to a block: hidden states + the other arguments.

    Attributes:
        hidden: ``[B, L, D]`` hidden states (replaced by each block's outputs in turn).
        args: the positional arguments after the hidden states.
        kwargs: the keyword arguments (attention mask, position embeddings, ...).
    """

    hidden: Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _no_cache(value: Any) -> Any:
    return None if type(value).__name__.endswith("Cache") else value


def _record(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BlockInputs:
    kwargs = {k: _no_cache(v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    if _HIDDEN in kwargs:
        hidden = kwargs.pop(_HIDDEN)
        rest = tuple(_no_cache(a) for a in args)
    elif args:
        hidden, rest = args[0], tuple(_no_cache(a) for a in args[1:])
    else:
        raise SfpkError("the first block was called without hidden states")
    return BlockInputs(hidden.detach(), rest, kwargs)


def _lm_forward(decoder: Decoder, ids: Tensor) -> None:
    if decoder.is_hf:
        decoder.lm(input_ids=ids, use_cache=False)
    else:
        decoder.lm(ids)


@torch.no_grad()
def capture_inputs(decoder: Decoder, calibration: Tensor, *, batch_size: int) -> list[BlockInputs]:
    """Block 0's inputs for every batch of ``batch_size`` calibration sequences.

    Runs the model only up to block 0 (the embeddings), in eval mode.

    Args:
        decoder: from :func:`sfpk.llm.find_decoder`.
        calibration: ``LongTensor [S, L]`` on the model's device.
        batch_size: sequences per batch.

    Returns:
        One :class:`BlockInputs` per batch, in order.
    """
    recorded: list[BlockInputs] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorded.append(_record(args, kwargs))
        raise _Captured

    handle = decoder.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calibration.split(batch_size):
            try:
                _lm_forward(decoder, batch)
            except _Captured:
                continue
            raise SfpkError(f"the forward of {type(decoder.lm).__name__} never reached block 0")
    finally:
        handle.remove()
    return recorded


def run_block(block: nn.Module, inputs: BlockInputs) -> Tensor:
    """The block's output hidden states on ``inputs`` (the first output if it returns a tuple)."""
    out = block(inputs.hidden, *inputs.args, **inputs.kwargs)
    if isinstance(out, tuple | list):
        out = out[0]
    return out
