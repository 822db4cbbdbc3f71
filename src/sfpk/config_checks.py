"""Validation of a resolved :class:`sfpk.config.Config`: the first invalid setting raises.

Kept apart from :mod:`sfpk.config` (which builds configs) so each stays short; every check
names the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, check_choice, check_fraction, check_positive
from .masks import SCOPES, STRUCTURES
from .train import select_device

if TYPE_CHECKING:
    from .config import Config

__all__ = ["validate"]


def validate(config: Config, *, check_paths: bool = True) -> None:
    """Raise ConfigError on the first invalid setting; see the tests for each one."""
    from . import data as data_module
    from . import models
    from .pruners import create_pruner

    check_choice("data set", config.data.dataset.lower(), data_module.list_datasets())
    name = config.model.name
    if not (":" in name and name.split(":", 1)[0].lower() in ("tv", "timm")):
        check_choice("model", name.lower(), models.list_models())
    check_fraction("sparsity", config.prune.sparsity)
    check_choice("scope", config.prune.scope, SCOPES)
    check_choice("structure", config.prune.structure, STRUCTURES)
    create_pruner(config.prune.method, **config.prune.options)
    _validate_training(config)
    _validate_rounds(config)
    if not 0.0 < config.data.val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction={config.data.val_fraction!r} must be in (0, 1): model "
            "selection uses the validation split, never the test split"
        )
    for key, value in {
        "data.num_workers": config.data.num_workers,
        "prune.bn_batches": config.prune.bn_batches,
        "run.checkpoint_every_steps": config.run.checkpoint_every_steps,
    }.items():
        check_positive(key, value, allow_zero=True)
    for key, value in {
        "data.eval_batch_size": config.data.eval_batch_size,
        "prune.batch_size": config.prune.batch_size,
        "prune.num_samples": config.prune.num_samples,
    }.items():
        if value is not None:
            check_positive(key, value)
    select_device(config.run.device)
    if check_paths:
        _validate_paths(config)


def _validate_training(config: Config) -> None:
    for phase in ("pretrain", "train"):
        try:
            config.optimizer_options(phase)
        except ConfigError as exc:
            raise ConfigError(f"{phase}: {exc}") from None
        section = getattr(config, phase)
        check_positive(f"{phase}.lr", section.lr)
        check_positive(f"{phase}.batch_size", section.batch_size)
        check_positive(f"{phase}.epochs", section.epochs, allow_zero=phase == "train")
    t = config.train
    check_positive("train.warmup_epochs", t.warmup_epochs, allow_zero=True)
    check_positive("train.fixed_lr_epochs", t.fixed_lr_epochs, allow_zero=True)
    check_positive("train.report_last_k", t.report_last_k)
    if t.lr_min is not None:
        check_positive("train.lr_min", t.lr_min, allow_zero=True)
    warmup = t.warmup_epochs if config.pipeline == "oneshot" else 0  # iterative: no warm-up
    if warmup + t.fixed_lr_epochs > t.epochs:
        raise ConfigError(
            f"train.warmup_epochs + train.fixed_lr_epochs = {warmup} + "
            f"{t.fixed_lr_epochs} must not exceed train.epochs = {t.epochs}"
        )


def _validate_rounds(config: Config) -> None:
    rounds = config.prune.rounds
    if rounds is None or rounds < 1:
        raise ConfigError(f"prune.rounds={rounds!r} must be >= 1")
    if config.pipeline != "iterative" or rounds == 1:
        return
    t = config.train
    for key, values in {
        "train.round_epochs": t.round_epochs,
        "train.round_lr": t.round_lr,
        "train.round_lr_end": t.round_lr_end,
    }.items():
        if values is not None and len(values) not in (1, rounds - 1):
            raise ConfigError(
                f"{key} has {len(values)} entries; with prune.rounds={rounds} give "
                f"{rounds - 1} (one per round but the last) or 1 (the same for every round)"
            )
        for value in values or []:
            check_positive(key, value, allow_zero=key == "train.round_epochs")


def _validate_paths(config: Config) -> None:
    checkpoint = config.model.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"model.checkpoint={checkpoint!r} does not exist")
    data_dir = config.data.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data.data_dir={data_dir!r} is not a directory")
