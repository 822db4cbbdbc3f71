"""What each layer-wise method needs to know about a linear layer's calibration inputs.

A forward hook on every ``nn.Linear`` of the current block accumulates, over all
calibration tokens ``x`` (rows of the layer's input ``X [tokens, d_in]``):

* ``gram``: ``H = (1/T) Σ x xᵀ = XᵀX / T`` (``[d_in, d_in]``), for SparseGPT, SpODE and SFPK,
* ``sq_norms``: ``Σ x_j²`` per input column, the diagonal of ``XᵀX`` (Wanda's ``‖X_j‖²``).

Only one block's layers are hooked at a time, so memory is one ``d_in × d_in`` matrix per
layer of that block. Sums run in float32 (float64 for float64 layers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["InputStats", "record_inputs"]


@dataclass
class InputStats:
    """Running statistics of one linear layer's inputs.

    Attributes:
        sq_norms: ``[d_in]`` sum of squares per input column over all tokens.
        gram: ``[d_in, d_in]`` sum of ``x xᵀ`` over all tokens, or None when not needed.
        tokens: how many tokens (rows of X) were seen.
    """

    sq_norms: Tensor
    gram: Tensor | None = None
    tokens: int = 0
    _dtype: torch.dtype = field(default=torch.float32, repr=False)

    def add_(self, x: Tensor) -> None:
        """Accumulate a batch of inputs ``x [..., d_in]``."""
        rows = x.detach().reshape(-1, x.shape[-1]).to(self._dtype)
        self.sq_norms.add_(rows.square().sum(0))
        if self.gram is not None:
            self.gram.addmm_(rows.T, rows)
        self.tokens += rows.shape[0]

    def hessian(self) -> Tensor:
        """``H = XᵀX / T``, the mean Gram matrix (SparseGPT's ``H / 2``)."""
        if self.gram is None:
            raise RuntimeError("this layer's Gram matrix was not recorded")
        return self.gram / max(self.tokens, 1)


@contextmanager
def record_inputs(
    layers: Mapping[str, nn.Linear], *, gram: bool
) -> Iterator[dict[str, InputStats]]:
    """Hook ``layers`` while the block runs; yields name -> :class:`InputStats`.

    Args:
        layers: name -> linear layer.
        gram: also accumulate the full Gram matrix (else only the column norms).
    """
    stats: dict[str, InputStats] = {}
    handles = []
    for name, layer in layers.items():
        dtype = torch.float64 if layer.weight.dtype == torch.float64 else torch.float32
        width, device = layer.in_features, layer.weight.device
        stats[name] = InputStats(
            torch.zeros(width, dtype=dtype, device=device),
            torch.zeros(width, width, dtype=dtype, device=device) if gram else None,
            _dtype=dtype,
        )

        def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any, entry=stats[name]) -> None:
            entry.add_(args[0])

        handles.append(layer.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
