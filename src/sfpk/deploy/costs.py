"""Parameter and multiply-accumulate (MAC) counts of a dense and a pruned model.

Only the MACs of conv (``nn.Conv1d/2d/3d``) and linear (``nn.Linear``) layers are counted:
one MAC per weight per output position, measured with forward hooks on one dummy input
(batch of 1). Biases, BatchNorm, activations, pooling, attention products and any other
operation are **not** counted; for the CNNs and MLPs of the zoo conv/linear layers are
nearly all of the arithmetic. Padded border positions count like the others (as in
fvcore and thop).

"Nonzero" counts use the weights as the masked model sees them: an entry counts if the mask
keeps it *and* the weight is not zero, so a pruned weight's MACs are not counted.
"Slim" counts (:func:`slim_cost_summary`) are the dense counts of the model that
:func:`sfpk.deploy.slim.slim_model` makes: what a structured pruning really saves without sparse
kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..masks.core import Masks
from .slim import SLIMMABLE_STRUCTURES, slim_model

__all__ = ["Costs", "count", "cost_summary", "slim_cost_summary"]

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Costs:
    """Parameter and MAC counts of one model, dense and masked.

    Attributes:
        params: all parameters (trainable or not; buffers excluded).
        nonzero_params: parameters that are non-zero after the masks are applied.
        macs: multiply-accumulates of conv and linear layers for one input sample.
        nonzero_macs: those whose weight is non-zero after masking.
    """

    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int

    @property
    def param_density(self) -> float:
        """Fraction of parameters kept (non-zero)."""
        return self.nonzero_params / self.params if self.params else 1.0

    @property
    def mac_density(self) -> float:
        """Fraction of conv/linear MACs left."""
        return self.nonzero_macs / self.macs if self.macs else 1.0

    @property
    def mac_reduction(self) -> float:
        """``macs / nonzero_macs``: the theoretical speed-up factor (inf if nothing is left)."""
        return self.macs / self.nonzero_macs if self.nonzero_macs else math.inf

    def as_dict(self) -> dict[str, Any]:
        """The counts and their ratios, for ``summary.json``."""
        return {
            **asdict(self),
            "param_density": self.param_density,
            "mac_density": self.mac_density,
            # JSON has no infinity: None when every MAC is pruned
            "mac_reduction": self.mac_reduction if self.nonzero_macs else None,
        }


def _masked_weights(model: nn.Module, masks: Masks | None) -> dict[str, Tensor]:
    """Every parameter as the masked model sees it (not written back into ``model``)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    if masks is None:
        return params
    masks.check_fits(model)
    for name, mask in masks.effective_masks().items():
        params[name] = params[name] * (mask != 0).to(params[name].device)
    return params


def _output_positions(
    model: nn.Module, input_shape: Sequence[int], input_dtype: torch.dtype | None
) -> dict[str, int]:
    """Per counted layer: output positions per sample, summed over its calls in one forward."""
    positions: dict[str, int] = {}
    handles = []

    def hook(name: str, module: nn.Module, output: Tensor) -> None:
        # batch of 1: a conv's output is [1, C_out, *spatial], a linear's [1, *, out_features]
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        positions[name] = positions.get(name, 0) + output.numel() // channels

    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):
            handles.append(
                module.register_forward_hook(lambda m, _inputs, out, name=name: hook(name, m, out))
            )
    first = next(model.parameters(), None)
    if input_dtype is None and first is not None and first.is_floating_point():
        input_dtype = first.dtype
    dummy = torch.zeros(
        1, *input_shape, device=first.device if first is not None else None, dtype=input_dtype
    )
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(dummy)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return positions


def count(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Masks | None = None,
    *,
    input_dtype: torch.dtype | None = None,
) -> Costs:
    """Count the parameters and conv/linear MACs of ``model``, dense and with ``masks``.

    Runs one forward pass on a zero input of shape ``(1, *input_shape)`` in eval mode (the
    model's mode is restored; weights and buffers are not changed). Only conv and linear
    MACs are counted (see the module docstring).

    Args:
        model: any module; its parameters decide the device and dtype of the dummy input.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``.
        masks: masks to count the pruned model with; None counts the model's own zeros.
        input_dtype: dtype of the dummy input: the model's float dtype by default,
            ``torch.long`` for models that take token ids.

    Returns:
        The :class:`Costs`.

    Raises:
        MaskMismatchError: if ``masks`` do not fit ``model``.

    Example:
        >>> costs = count(model, (3, 32, 32), masks)   # doctest: +SKIP
        >>> costs.mac_density                           # doctest: +SKIP
        0.12
    """
    weights = _masked_weights(model, masks)
    positions = _output_positions(model, tuple(input_shape), input_dtype)
    macs = nonzero_macs = 0
    for name, calls in positions.items():
        weight = weights[f"{name}.weight" if name else "weight"]
        # each output position of a conv/linear is one MAC per weight of the layer
        macs += calls * weight.numel()
        nonzero_macs += calls * int(torch.count_nonzero(weight))
    return Costs(
        params=sum(w.numel() for w in weights.values()),
        nonzero_params=sum(int(torch.count_nonzero(w)) for w in weights.values()),
        macs=macs,
        nonzero_macs=nonzero_macs,
    )


def cost_summary(
    model: nn.Module,
    masks: Masks | None,
    input_shape: Sequence[int],
    input_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The :func:`count` figures as a flat dict for ``summary.json``.

    Keys: ``params``, ``nonzero_params``, ``macs``, ``nonzero_macs``, ``param_density``,
    ``mac_density``, ``mac_reduction`` (conv/linear MACs only).
    """
    return count(model, input_shape, masks, input_dtype=input_dtype).as_dict()


def slim_cost_summary(
    model: nn.Module, masks: Masks | None, input_shape: Sequence[int]
) -> dict[str, int | None]:
    """``slim_params`` and ``slim_macs``: the dense counts of the slimmed model.

    Both are None when the masks are not ``filter`` or ``channel`` masks (nothing to slim).
    ``model`` is not changed. Needs the ``slim`` extra (torch-pruning).

    Raises:
        ConfigError: torch-pruning is not installed.
        MaskMismatchError: if ``masks`` do not fit ``model``.
    """
    if masks is None or masks.structure not in SLIMMABLE_STRUCTURES:
        return {"slim_params": None, "slim_macs": None}
    first = next(model.parameters())
    sample = torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)
    slim = slim_model(model, masks, sample)
    costs = count(slim, input_shape)
    return {"slim_params": costs.params, "slim_macs": costs.macs}
