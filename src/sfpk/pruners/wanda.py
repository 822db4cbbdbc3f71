"""Wanda (Sun et al. 2023): weights times input-activation norms, no backward pass.

Eq. 1 of the paper scores weight ``W_ij`` of a layer ``y = W x`` by ``|W_ij| · ‖X_j‖₂``, the
l2 norm of input feature ``j`` over every calibration token, and compares scores within
each output row (``scope="row"``, this method's default). It was made for large language
models, where a few input features carry outsized activations; it needs only forward passes.

Convolutions: the input feature of ``W[o, c, ...]`` is input channel ``c`` (of ``o``'s
group), and its norm runs over the batch and every spatial position; a kernel's positions
share it (the unfolded-input norm differs only at the borders, by padding).
Biases (``include_bias``): the input of a bias is the constant 1, so ``|b|·sqrt(tokens)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError, SfpkError, check_positive
from ..masks.core import reduce_to_mask
from .base import ScorePruner, register, to_device

__all__ = ["WandaPruner"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _InputNorms:
    """Forward hooks that sum the squares of each watched layer's input features."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.squares: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in modules.items()
        ]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach().to(torch.float64)
            if isinstance(module, _CONVS):
                dims = [d for d in range(x.dim()) if d != 1]
                tokens = x.numel() // x.shape[1]
            else:  # nn.Linear: features on the last dim, any leading (batch, sequence) dims
                dims = list(range(x.dim() - 1))
                tokens = x.numel() // x.shape[-1]
            square = x.pow(2).sum(dim=dims)
            self.squares[name] = self.squares.get(name, 0) + square
            self.tokens[name] = self.tokens.get(name, 0) + tokens

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _weight_factor(module: nn.Module, norms: Tensor, weight: Tensor) -> Tensor:
    """``‖X_j‖`` arranged to broadcast against ``weight`` (conv groups respected)."""
    if isinstance(module, _CONVS) and module.groups > 1:
        per_group_in = weight.shape[1]
        out_per_group = weight.shape[0] // module.groups
        group_of_out = torch.arange(weight.shape[0], device=norms.device) // out_per_group
        factor = norms.view(module.groups, per_group_in)[group_of_out]
    else:
        factor = norms.view(1, -1).expand(weight.shape[0], -1)
    return factor.reshape(*factor.shape, *([1] * (weight.dim() - 2)))


@register
class WandaPruner(ScorePruner):
    """Wanda: ``|W| · ‖X‖₂`` per weight, compared within each output row by default."""

    name = "wanda"
    uses_loss = False
    default_scope = "row"

    @dataclass(frozen=True)
    class Options:
        """Args:
        batches: calibration batches to read, at most one pass (None: the whole pass).
            Default 10.
        train_mode: run the calibration forwards in train mode (BatchNorm batch
            statistics, dropout on); the paper calibrates in eval mode.
        """

        batches: int | None = 10
        train_mode: bool = False

        def __post_init__(self) -> None:
            if self.batches is not None:
                check_positive("batches", self.batches)

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        owners = {}
        for name in masks:
            module_name, _, tensor_name = name.rpartition(".")
            module = modules[module_name]
            if not isinstance(module, (nn.Linear, *_CONVS)):
                raise ConfigError(
                    f"wanda scores the inputs of Linear and Conv layers; {name!r} belongs to a "
                    f"{type(module).__name__} (exclude it with exclude=[...])"
                )
            owners[name] = (module_name, tensor_name)
        watched = {m: modules[m] for m, _ in owners.values()}
        recorder = _InputNorms(watched)
        model.train(self.options.train_mode)
        weights = {n: params[n].detach() * m for n, m in masks.effective_masks().items()}
        read = 0
        try:
            with torch.no_grad():
                for batch in islice(data, self.options.batches):
                    read += 1
                    inputs, _ = to_device(batch, ctx.device)
                    functional_call(model, weights, (inputs,), strict=False)
        finally:
            recorder.remove()
        if read == 0:
            raise SfpkError("wanda: the calibration data yielded no batch")
        scores = {}
        for name, (module_name, tensor_name) in owners.items():
            theta = params[name].detach().abs().to(torch.float64)
            if tensor_name == "bias":
                score = theta * math.sqrt(recorder.tokens[module_name])
            else:
                norms = recorder.squares[module_name].sqrt()
                score = theta * _weight_factor(watched[module_name], norms, theta)
            scores[name] = reduce_to_mask(score, masks[name].shape)
        return scores
