"""Mixed precision: autocast for the forward passes, a gradient scaler for fp16.

``precision`` is ``"fp32"`` (nothing changes), ``"bf16"`` or ``"fp16"``. Under bf16/fp16 the
forward (and with it the backward) of matmuls and convolutions runs in the low precision
through ``torch.autocast``; parameters, their gradients, optimizer state, masks and the
particle engine's state stay fp32. fp16's narrow range needs loss scaling
(``torch.amp.GradScaler``); bf16 has fp32's range and needs none. CPUs run bf16 autocast;
fp16 autocast is for GPUs (on CPU it is refused with a message rather than run slowly).
SFPK's vmapped particle pass also runs its normalisation layers in fp32 under bf16/fp16
(:mod:`sfpk.pruners.particles.batching` says why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from ..errors import ConfigError, check_choice

__all__ = ["PRECISIONS", "Precision", "autocast", "grad_scaler", "check_precision"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> Precision:
    """``precision`` if known and usable on ``device``, else a ConfigError saying why."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "precision='fp16' needs a GPU (CPU autocast runs fp16 slowly and without loss "
            "scaling); use precision='bf16' on CPU, or fp32"
        )
    return precision  # type: ignore[return-value]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` at ``precision`` on ``device``'s type; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16, None otherwise (bf16 and fp32 need none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
