"""The n particles' forward+backward passes: one per particle, or all in one vmapped pass.

Each particle needs ``∂E_i/∂w_eff`` at its own effective weights ``θ ⊙ p_i`` on its own
mini-batch. The **loop** runs n ordinary passes. The **vmap** path stacks the n weight sets
and batches and runs ``torch.func.vmap(grad_and_value(loss))`` once: one kernel launch per
layer instead of n, which is what a GPU needs when one small model leaves it mostly idle.
On a few CPU cores a single pass already keeps them busy, so there the loop is as fast
(the issue's trial: 26 ms vmapped against 24 ms looped for 10 MLP particles); ``"auto"``
therefore picks vmap on accelerators and the loop on CPU, and either can be forced.

BatchNorm: in train mode the forward normalises with the batch's own statistics, so the
gradients do not depend on the running statistics, and both paths give the same gradients.
Each vmapped particle updates a private copy of the running statistics, which is dropped
(the loop updates the model's own n times; pruning calls restore the model state anyway).

Mixed precision: under bf16/fp16 autocast the vmapped pass runs every normalisation (batch,
instance, layer, group and RMS norm) at the precision of its weights and statistics, fp32,
and passes the fp32 output on (autocast's own policy for layer, group and RMS norm on
CUDA); matmuls and convolutions stay in the low precision. The reason: torch's vmap
batching rules for batch, instance and layer norm call the kernels with stand-in weights in
the input's dtype, or with none, while the running or saved statistics stay fp32, so a
bf16 input stops the kernel with "expected scalar type BFloat16 but found Float" (the
mismatch of pytorch/pytorch issue 184890). Unbatched, the kernels take a bf16 input with
fp32 weights and statistics, so the loop needs nothing. Without autocast (fp32) nothing is
intercepted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ...errors import check_choice
from ...masks.functional import LossFn, effective_weight_grads

__all__ = ["BATCHINGS", "Batching", "iter_particle_grads", "particle_grads", "resolve_batching"]

Batching = Literal["auto", "loop", "vmap"]
BATCHINGS: tuple[str, ...] = ("auto", "loop", "vmap")

Grads = tuple[Tensor, dict[str, Tensor]]


def resolve_batching(batching: str, device: torch.device) -> Literal["loop", "vmap"]:
    """``"auto"`` -> vmap on an accelerator, the loop on CPU; the others as given."""
    check_choice("particle_batching", batching, BATCHINGS)
    if batching == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    return batching  # type: ignore[return-value]


def particle_grads(
    model: nn.Module,
    effective: Sequence[Mapping[str, Tensor]],
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    batching: Literal["loop", "vmap"],
) -> list[Grads]:
    """``(loss_i, {name: ∂E_i/∂w_eff})`` for each particle ``i``.

    Args:
        model: the network (its parameters are not differentiated or changed).
        effective: per particle, the effective weights ``{name: θ ⊙ p_i}``.
        batches: per particle, its ``(inputs, targets)`` on the model's device.
        loss_fn: the energy loss.
        batching: ``"loop"`` or ``"vmap"``. The vmap path falls back to the loop when the
            batches differ in shape (a short last batch), since they cannot be stacked.
    """
    same_shapes = len({(tuple(x.shape), tuple(y.shape)) for x, y in batches}) == 1
    if batching == "loop" or len(effective) < 2 or not same_shapes:
        return list(iter_particle_grads(model, effective, batches, loss_fn))
    return _vmapped(model, effective, batches, loss_fn)


def iter_particle_grads(
    model: nn.Module,
    effective: Iterable[Mapping[str, Tensor]],
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    *,
    each_pass: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> Iterator[Grads]:
    """The loop of :func:`particle_grads`, lazily: one particle's pass per item drawn.

    Given a lazy ``effective`` (a generator), only the current particle's effective weights
    are held, which is what the particle engine wants for large models.

    Args:
        model: the network (its parameters are not differentiated or changed).
        effective: per particle, the effective weights ``{name: θ ⊙ p_i}``.
        batches: per particle, its ``(inputs, targets)`` on the model's device.
        loss_fn: the energy loss.
        each_pass: a fresh context for each particle's forward+backward (e.g. autocast); the
            caller's work on a yielded result runs outside it.
    """
    for eff, (x, y) in zip(effective, batches, strict=True):
        with each_pass():
            grads = effective_weight_grads(model, eff, x, y, loss_fn)
        yield grads


def _vmapped(
    model: nn.Module,
    effective: Sequence[Mapping[str, Tensor]],
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
) -> list[Grads]:
    n = len(effective)
    names = list(effective[0])
    stacked = {name: torch.stack([e[name].detach() for e in effective]) for name in names}
    inputs = torch.stack([x for x, _ in batches])
    targets = torch.stack([y for _, y in batches])
    fixed = {k: p.detach() for k, p in model.named_parameters() if k not in stacked}
    # Private running statistics per particle (train-mode BatchNorm updates them in place).
    buffers = {k: b.detach().unsqueeze(0).repeat_interleave(n, 0) for k, b in model.named_buffers()}

    def energy(weights: dict[str, Tensor], bufs: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, ({**fixed, **weights}, bufs), (x,), strict=False)
        return loss_fn(logits, y)

    step: Callable[..., tuple[dict[str, Tensor], Tensor]] = vmap(
        grad_and_value(energy), in_dims=(0, 0, 0, 0), randomness="different"
    )
    with torch.enable_grad(), _norms_at_parameter_precision(inputs.device):
        grads, losses = step(stacked, buffers, inputs, targets)
    return [(losses[i].detach(), {name: grads[name][i] for name in names}) for i in range(n)]


# The normalisations whose inputs _NormsAtParameterPrecision widens (functional and aten).
_NORMS = frozenset(
    {
        F.batch_norm,
        F.instance_norm,
        F.layer_norm,
        F.group_norm,
        F.rms_norm,
        torch.batch_norm,
        torch.instance_norm,
        torch.layer_norm,
        torch.group_norm,
        torch.rms_norm,
    }
)


class _NormsAtParameterPrecision(TorchFunctionMode):
    """Runs each normalisation at the widest dtype among its input, weights and statistics.

    A bf16 activation entering a BatchNorm with fp32 weights and running statistics is cast
    to fp32 first, so the op (and its vmap batching rule, forward and backward) sees one
    dtype, which its output keeps. Any other call passes through unchanged.
    """

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> object:
        kwargs = dict(kwargs or {})
        if func in _NORMS and args and isinstance(args[0], Tensor):
            x = args[0]
            dtype = x.dtype
            for value in (*args[1:], *kwargs.values()):
                if isinstance(value, Tensor) and value.is_floating_point():
                    dtype = torch.promote_types(dtype, value.dtype)
            if dtype != x.dtype:
                args = (x.to(dtype), *args[1:])
        return func(*args, **kwargs)


def _norms_at_parameter_precision(device: torch.device) -> AbstractContextManager[object]:
    """:class:`_NormsAtParameterPrecision` while autocast is on for ``device``, else nothing.

    Without autocast every activation already has its layer's dtype, so fp32 passes run
    exactly as before.
    """
    if torch.is_autocast_enabled(device.type):
        return _NormsAtParameterPrecision()
    return contextlib.nullcontext()
