"""BatchNorm recalibration after pruning.

Removing weights shifts every activation, so the running statistics that BatchNorm learned on
the dense network no longer fit: on a small BN CNN at 90 % removed, accuracy before
fine-tuning is ~91 % with recalibration and ~30 % without (design.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import Tensor, nn

__all__ = ["recalibrate_bn", "batch_norm_layers"]


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that tracks running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    batches: int = 2,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Mutates ``model``'s BatchNorm statistics: re-estimates them on ``batches`` batches.

    As the reference does: reset running mean/var to 0/1, switch to a cumulative average
    (momentum None), run train-mode forwards, then restore momenta and the model's mode.
    Each batch comes from a fresh iteration of ``data`` (its first batch), as in the
    reference. A model without BatchNorm is left untouched and ``data`` is not read.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return model
    momenta = [m.momentum for m in layers]
    was_training = model.training
    device = device or next(model.parameters()).device
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(batches):
            first = list(islice(iter(data), 1))
            if not first:
                raise ValueError("recalibrate_bn: the data yielded no batch")
            inputs = first[0][0].to(device)
            model(inputs)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return model
