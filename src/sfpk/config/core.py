"""The run configuration: one nested dataclass, YAML recipes, CLI overrides, validation.

Precedence (style.md §6): dataclass defaults < the ``--demo`` preset < the YAML file given
with ``--config`` < the flags the user actually typed. Defaults follow the paper's README
recipe (CIFAR-100 ResNet-20, one-shot SFPK at 95 % sparsity, method spec §5.7 and §9.1);
recipes in ``configs/`` hold only their differences. Every run writes its fully resolved
``config.yaml``, which is also what ``sfpk resume`` reads back.

Validation happens in three places, each next to what it knows: every section
(:mod:`sfpk.config.sections`) checks its own values when it is built (``__post_init__``:
:func:`sfpk.errors.check_fields` checks each field's type, finiteness and ``_knob`` range,
docs/reliability.md), :class:`Config` checks the rules that span sections, and
:mod:`sfpk.config.checks` checks names, the device and paths against the registries and the
host.

Conventions: ``prune.sparsity`` is the fraction of prunable weights REMOVED, in (0, 1).
Method options (``prune.options``) are checked by ``sfpk.create_pruner(method, **options)``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data import dataset_argument
from ..errors import ConfigError, check_choice, check_positive
from ..prune_args import SEED_MAX
from ..training.schedules import REFERENCE_ROUND_EPOCHS, REFERENCE_ROUND_LR_END, resample
from .checks import (
    check_dataset,
    check_device,
    check_input_paths,
    check_method,
    check_model,
    resolve_data_paths,
)
from .layers import from_dict, merge, nest, read_yaml
from .sections import (
    PRETRAIN_DEFAULTS,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "Pipeline",
    "PIPELINES",
    "SECTIONS",
    "PRETRAIN_DEFAULTS",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "TrainConfig",
    "PruneConfig",
    "RunConfig",
    "Config",
    "build_config",
    "load_config",
    "save_config",
    "config_to_dict",
    "demo_preset",
    "validate",
    "SEED_MAX",
]


Pipeline = Literal["pretrain", "oneshot", "iterative"]
PIPELINES: tuple[str, ...] = typing.get_args(Pipeline)
# merged key-wise, free keys
_OPTION_DICTS = {("data", "options"), ("model", "options"), ("prune", "options")}


@dataclass
class Config:
    """Everything one run needs; ``pipeline`` is set by the subcommand.

    Built, each section has checked its own values; this class checks the rules between
    sections (per-round lists against ``prune.rounds``, the fine-tuning epoch budget).
    """

    pipeline: Pipeline = "oneshot"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(**PRETRAIN_DEFAULTS))
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_choice("pipeline", self.pipeline, PIPELINES)
        self._check_epoch_budget()
        self._default_round_lists()
        self._check_round_lists()

    def _default_round_lists(self) -> None:
        """Unset per-round lists of an iterative run: the reference's 10-round schedule
        (:data:`REFERENCE_ROUND_EPOCHS`, :data:`REFERENCE_ROUND_LR_END`) resampled to the
        run's K-1 fine-tunings, so ``--rounds 3`` works without spelling out lists."""
        t = self.train
        rounds = self.prune.rounds  # None until build_config resolves it
        if self.pipeline != "iterative" or rounds is None:
            return
        if None not in (t.round_epochs, t.round_lr_end):
            return
        fine_tunings = max(1, rounds - 1)
        self.train = dataclasses.replace(
            t,
            round_epochs=(
                resample(REFERENCE_ROUND_EPOCHS, fine_tunings)
                if t.round_epochs is None
                else t.round_epochs
            ),
            round_lr_end=(
                resample(REFERENCE_ROUND_LR_END, fine_tunings)
                if t.round_lr_end is None
                else t.round_lr_end
            ),
        )

    def _check_epoch_budget(self) -> None:
        t = self.train
        warmup = t.warmup_epochs if self.pipeline == "oneshot" else 0  # iterative: no warm-up
        if warmup + t.fixed_lr_epochs > t.epochs:
            raise ConfigError(
                f"train.warmup_epochs + train.fixed_lr_epochs = {warmup} + "
                f"{t.fixed_lr_epochs} must not exceed train.epochs = {t.epochs} (the warm-up "
                f"is 5 epochs by default: pass --warmup-epochs "
                f"{max(0, t.epochs - t.fixed_lr_epochs)} or fewer, or more --epochs)"
            )

    def _check_round_lists(self) -> None:
        rounds = self.prune.rounds
        if self.pipeline != "iterative" or rounds is None or rounds == 1:
            return
        t = self.train
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


# The config sections, in YAML order: every field of Config but the pipeline.
SECTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Config) if f.name != "pipeline"
)


def demo_preset() -> dict[str, Any]:
    """The ``--demo`` settings: MNIST-1D / cnn1d, short training budgets.

    Pretraining 15 epochs and fine-tuning 10 epochs; the pruner keeps its defaults, so SFPK
    runs the paper's recipe (N=100 steps, n=10 particles). About one minute on 2 idle cores.
    """
    return {
        "data": {"dataset": "mnist1d"},
        "model": {"name": "cnn1d"},
        "pretrain": {"epochs": 15, "lr": 0.05},
        "train": {"epochs": 10, "warmup_epochs": 1, "report_last_k": 3},
    }


# -- building ---------------------------------------------------------------------------


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (what ``config.yaml`` holds)."""
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path


def build_config(
    pipeline: Pipeline,
    *,
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    demo: bool = False,
    check_paths: bool = True,
) -> Config:
    """Resolve and validate a config: defaults < demo preset < YAML < ``overrides``.

    Args:
        pipeline: ``"pretrain"``, ``"oneshot"`` or ``"iterative"``.
        yaml_path: a recipe file (sections data, model, pretrain, train, prune, run).
        overrides: dotted keys (``"prune.sparsity"``) the user set on the command line.
        demo: apply :func:`demo_preset` first.
        check_paths: check that ``model.checkpoint`` and ``data.data_dir`` exist.

    Returns:
        The validated config, with ``prune.rounds`` resolved and ``model.checkpoint`` /
        ``data.data_dir`` made absolute (relative to the current working directory).

    Raises:
        ConfigError: unknown key (with close matches), wrong type or invalid value.
    """
    check_choice("pipeline", pipeline, PIPELINES)
    file_data = read_yaml(yaml_path) if yaml_path is not None else {}
    file_data.pop("pipeline", None)
    user = nest(overrides or {})
    layers = [file_data, user]
    if demo:
        layers.insert(0, demo_preset())
    data = config_to_dict(Config(pipeline=pipeline))
    for layer in layers:
        merge(data, copy.deepcopy(layer), free_dicts=_OPTION_DICTS)
    if data["prune"]["rounds"] is None:
        data["prune"]["rounds"] = 10 if pipeline == "iterative" else 1
    config: Config = from_dict(Config, data)
    # Input paths are made absolute here, so the saved config.yaml (what `sfpk resume DIR`
    # reads) names the same files whatever the working directory of the resume.
    if config.model.checkpoint is not None:
        config.model.checkpoint = os.path.abspath(os.path.expanduser(config.model.checkpoint))
    resolve_data_paths(config)
    validate(config, check_paths=check_paths)
    return config


def validate(config: Config, *, check_paths: bool = True) -> None:
    """Check what a config cannot check alone: names, device and paths against the world.

    The values themselves were checked when the config was built; this looks the data set
    and the model up in their registries, the method and the data set with their options,
    asks torch for the device and, with ``check_paths``, checks that ``model.checkpoint``,
    ``data.data_dir`` and the path of ``text:<path>`` exist.

    Raises:
        ConfigError: the first failing check (UnknownNameError for an unknown name).
    """
    check_dataset(config.data.dataset, config.data.options)
    check_model(config.model.name)
    check_method(config.prune.method, config.prune.options)
    check_device(config.run.device)
    if check_paths:
        check_input_paths(
            checkpoint=config.model.checkpoint,
            data_dir=config.data.data_dir,
            data_path=dataset_argument(config.data.dataset),
        )


def load_config(path: str | Path, *, check_paths: bool = True) -> Config:
    """Read back a resolved ``config.yaml`` (as written by :func:`save_config`)."""
    data = read_yaml(path)
    pipeline = data.get("pipeline", "oneshot")
    return build_config(pipeline, yaml_path=path, check_paths=check_paths)
