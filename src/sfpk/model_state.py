"""Snapshot and restore of a model's modes, buffers and ``requires_grad`` flags."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModelState"]


class ModelState:
    """A model's train/eval modes, buffers and ``requires_grad`` flags, to restore later.

    Pruning calls and model traces run the model in modes of their own (and may update
    BatchNorm statistics); they snapshot it first and restore it after, so the caller's
    model is left as it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.training = model.training
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put the snapshot back into ``model`` (the same module, or one named alike)."""
        for name, module in model.named_modules():
            module.training = self.modes.get(name, self.training)
        for name, buffer in model.named_buffers():
            if name in self.buffers:
                buffer.copy_(self.buffers[name])
        for name, param in model.named_parameters():
            param.requires_grad_(self.requires_grad.get(name, True))
