"""The settings of one training phase and the optimizer they build.

:class:`OptimizerConfig` is a phase's budget, LR range, optimizer and loss settings, checked
at construction; :func:`make_optimizer` turns it into a ``torch.optim`` optimizer. The
:class:`sfpk.Trainer` runs the epochs with both; the config sections ``pretrain`` and
``train`` (:mod:`sfpk.config.core`) inherit the fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from ..errors import ConfigError, SfpkError, check_choice, check_positive

__all__ = ["OPTIMIZERS", "OptimizerName", "OptimizerConfig", "make_optimizer"]

OptimizerName = Literal["sgd", "adam", "adamw"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


def _setting(default: Any, help: str) -> Any:
    """A field with its help text, which the CLI shows for the config sections' flags."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class OptimizerConfig:
    """How one training phase runs: its budget, LR range, optimizer and loss.

    Declared once here and shared: the :class:`sfpk.Trainer` reads the optimizer and loss
    fields, the pipelines read ``epochs``, ``batch_size``, ``lr`` and ``lr_min`` to build the LR
    schedule (:mod:`sfpk.training.schedules`), and the config sections ``pretrain`` and ``train``
    (:mod:`sfpk.config.core`) inherit every field. Inheritance rather than a nested field keeps the
    YAML keys and flags flat under their section (``train.momentum``, ``--momentum``) with no
    flattening code in the loader, the writer or the CLI, and a config section can be handed to
    the Trainer as it is.

    Every value is checked at construction, so a Trainer never starts with a bad setting.

    Attributes:
        epochs: training epochs of the phase (>= 0).
        batch_size: training batch size.
        optimizer: ``"sgd"`` (heavy-ball momentum, Nesterov optional), ``"adam"`` or
            ``"adamw"`` (decoupled weight decay).
        lr: peak learning rate; the caller sets the LR of each epoch.
        lr_min: floor of the cosine schedule; None means the phase's default
            (:func:`~sfpk.training.schedules.resolve_lr_min`,
            :data:`~sfpk.training.schedules.PRETRAIN_LR_MIN`).
        momentum: SGD momentum (ignored by Adam/AdamW).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW).
        label_smoothing: label smoothing of the training cross-entropy; evaluation always
            uses plain cross-entropy.
        grad_accum_steps: batches whose gradients are summed before one optimizer step.
        grad_clip: clip the global gradient norm to this value; None disables clipping.
    """

    key_prefix: ClassVar[str] = ""  # names the fields in errors; a config section: "train."

    epochs: int = _setting(100, "training epochs")
    batch_size: int = _setting(64, "training batch size")
    optimizer: OptimizerName = _setting("sgd", "sgd, adam or adamw")
    lr: float = _setting(1e-2, "peak LR")
    lr_min: float | None = _setting(
        None,
        "cosine floor (default: pretraining 1e-6; fine-tuning 1e-8 one-shot, 0.1*lr iterative "
        "or with fixed-LR epochs)",
    )
    momentum: float = _setting(0.875, "SGD momentum (used in every phase, also iterative)")
    nesterov: bool = _setting(False, "Nesterov momentum")
    weight_decay: float = _setting(0.0, "weight decay (used in every phase, also iterative)")
    label_smoothing: float = _setting(0.0, "label smoothing of the training loss")
    grad_accum_steps: int = _setting(1, "batches per optimizer step (reference --n_grad_accum)")
    grad_clip: float | None = _setting(None, "global gradient-norm clip")

    def __post_init__(self) -> None:
        key = self.key_prefix
        check_positive(f"{key}epochs", self.epochs, allow_zero=True)
        check_positive(f"{key}batch_size", self.batch_size)
        check_choice(f"{key}optimizer", self.optimizer, OPTIMIZERS)
        check_positive(f"{key}lr", self.lr)
        if self.lr_min is not None:
            check_positive(f"{key}lr_min", self.lr_min, allow_zero=True)
        check_positive(f"{key}momentum", self.momentum, allow_zero=True)
        check_positive(f"{key}weight_decay", self.weight_decay, allow_zero=True)
        check_positive(f"{key}grad_accum_steps", self.grad_accum_steps)
        if self.grad_clip is not None:
            check_positive(f"{key}grad_clip", self.grad_clip)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{key}label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError(
                f"{key}nesterov=True needs {key}optimizer='sgd' and {key}momentum > 0"
            )


def make_optimizer(
    params: Iterable[nn.Parameter], options: OptimizerConfig, *, lr: float
) -> torch.optim.Optimizer:
    """Build the optimizer named in ``options`` at learning rate ``lr``."""
    params = list(params)
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=options.momentum,
            nesterov=options.nesterov,
            weight_decay=options.weight_decay,
        )
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=options.weight_decay)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
    raise SfpkError(f"optimizer={options.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
