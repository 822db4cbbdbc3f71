"""Masked forward/backward without hooks: ``functional_call(model, {name: w * m})``.

The model's own parameters are never written. Each masked parameter is replaced for one call
by ``w * m`` (``m`` broadcasts against ``w``), so gradients with respect to the masks, or to
the effective weights, come out of a single ordinary backward pass. Forward hooks that run a
layer and then recompute it with masked weights (what the reference does) cost a second
forward per layer; this costs one multiply per masked tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["masked_weights", "masked_forward", "effective_weight_grads", "LossFn"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def masked_weights(
    model: nn.Module, masks: Mapping[str, Tensor], params: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``{name: w * m}`` for every masked parameter (``params`` override the model's own)."""
    source = params if params is not None else dict(model.named_parameters())
    return {name: source[name] * mask for name, mask in masks.items()}


def masked_forward(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    inputs: Tensor,
    *,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Run ``model(inputs)`` with every masked parameter replaced by ``w * m``.

    Args:
        model: any module; it is not modified (BatchNorm running statistics still update
            in train mode, exactly as in a plain forward).
        masks: name -> mask broadcasting against that parameter. Make the masks require grad
            to get gradients with respect to them.
        inputs: the model's input batch.
        params: optional replacement values for parameters (masked or not), e.g. float64
            copies; names not given come from the model.
    """
    overrides = dict(params) if params is not None else {}
    overrides.update(masked_weights(model, masks, params))
    return functional_call(model, overrides, (inputs,), strict=False)


def effective_weight_grads(
    model: nn.Module,
    effective: Mapping[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and its gradient with respect to the given effective weights, in one backward.

    ``effective`` maps parameter names to the tensors to use *as* those parameters (e.g.
    ``theta * b`` for a binarized mask ``b``). The gradient is taken at those values; it is
    the straight-through mask gradient once multiplied by ``theta`` (method spec §2.4).
    Only these tensors get gradients; other parameters are not differentiated.
    """
    leaves = {n: t.detach().requires_grad_(True) for n, t in effective.items()}
    with torch.enable_grad():
        logits = functional_call(model, leaves, (inputs,), strict=False)
        loss = loss_fn(logits, targets)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out = {
        n: g if g is not None else torch.zeros_like(leaves[n])
        for n, g in zip(leaves, grads, strict=True)
    }
    return loss.detach(), out
