"""The run configuration: one nested dataclass, YAML recipes, CLI overrides, validation.

Precedence (style.md §6): dataclass defaults < the ``--demo`` preset < the YAML file given
with ``--config`` < the flags the user actually typed. Defaults follow the paper's README
recipe (CIFAR-100 ResNet-20, one-shot SFPK at 95 % sparsity, method spec §5.7 and §9.1);
recipes in ``configs/`` hold only their differences. Every run writes its fully resolved
``config.yaml``, which is also what ``sfpk resume`` reads back.

Conventions: ``prune.sparsity`` is the fraction of prunable weights REMOVED, in (0, 1).
Method options (``prune.options``) are checked by ``sfpk.create_pruner(method, **options)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_checks import validate
from .errors import ConfigError, check_choice
from .train import OptimizerOptions

__all__ = [
    "PIPELINES",
    "PARTICLE_METHODS",
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
]

PIPELINES = ("pretrain", "oneshot", "iterative")
EMBEDDED_DATASETS = ("mnist1d", "digits")  # generated locally, never read from a directory
PARTICLE_METHODS = ("sfpk", "spode")
SECTIONS = ("data", "model", "pretrain", "train", "prune", "run")
_OPTION_DICTS = {("model", "options"), ("prune", "options")}  # merged key-wise, free keys


def _knob(default: Any = None, help: str = "", *, flag: str | None = None, factory: Any = None):
    """A config field with its help text and (optionally) its CLI flag name."""
    metadata = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Which data set, where, and how it is split and loaded."""

    dataset: str = _knob("cifar100", "data set name (sfpk datasets)", flag="data")
    data_dir: str | None = _knob(None, "folder of on-disk data sets (default $SFPK_DATA)")
    num_workers: int = _knob(0, "DataLoader worker processes")
    val_fraction: float = _knob(0.1, "fraction of the training split held out for validation")
    augment: bool = _knob(True, "training augmentation (image data sets)")
    eval_batch_size: int = _knob(256, "batch size of validation / test evaluation")


@dataclass
class ModelConfig:
    """Which network, and the dense weights to start from."""

    name: str = _knob("resnet20", "model name (sfpk models)", flag="model")
    checkpoint: str | None = _knob(
        None, "dense weights (safetensors or torch state dict); pretrains when absent"
    )
    options: dict[str, Any] = _knob(
        help="model builder option (repeatable)", flag="model-option", factory=dict
    )


@dataclass
class PretrainConfig:
    """Dense pretraining (reference CIFAR recipe, spec §5.7); flags are --pretrain-*."""

    epochs: int = _knob(200, "pretraining epochs")
    batch_size: int = _knob(64, "pretraining batch size")
    optimizer: str = _knob("sgd", "sgd, adam or adamw")
    lr: float = _knob(0.05, "peak pretraining LR (cosine down to lr_min)")
    lr_min: float = _knob(1e-6, "pretraining cosine floor")
    momentum: float = _knob(0.875, "SGD momentum")
    nesterov: bool = _knob(True, "Nesterov momentum")
    weight_decay: float = _knob(5e-4, "weight decay")
    label_smoothing: float = _knob(0.0, "label smoothing of the training loss")
    grad_accum_steps: int = _knob(1, "batches per optimizer step")
    grad_clip: float | None = _knob(None, "global gradient-norm clip")


@dataclass
class TrainConfig:
    """Fine-tuning of the pruned network (final phase and iterative rounds)."""

    epochs: int = _knob(100, "final fine-tuning epochs (reference --ft_epochs)")
    batch_size: int = _knob(64, "fine-tuning batch size (reference --bsz)")
    optimizer: str = _knob("sgd", "sgd, adam or adamw")
    lr: float = _knob(1e-2, "peak fine-tuning LR")
    lr_min: float | None = _knob(
        None, "cosine floor (default: 1e-8 one-shot, 0.1*lr iterative or with fixed-LR epochs)"
    )
    momentum: float = _knob(0.875, "SGD momentum (used in every phase, also iterative)")
    nesterov: bool = _knob(False, "Nesterov momentum")
    weight_decay: float = _knob(0.0, "weight decay (used in every phase, also iterative)")
    label_smoothing: float = _knob(0.0, "label smoothing of the training loss")
    grad_accum_steps: int = _knob(1, "batches per optimizer step (reference --n_grad_accum)")
    grad_clip: float | None = _knob(None, "global gradient-norm clip")
    warmup_epochs: int = _knob(5, "one-shot linear warm-up epochs (iterative: none)")
    cold_start_lr: float = _knob(1e-4, "LR at the start of the warm-up")
    fixed_lr_epochs: int = _knob(0, "final epochs held at the cosine floor")
    report_last_k: int = _knob(5, "report the mean test accuracy of the last k epochs")
    round_epochs: list[int] = _knob(
        help="iterative: fine-tuning epochs after each round but the last (K-1 or 1 values)",
        factory=lambda: [3, 4, 5, 10, 15, 15, 20, 20, 30],
    )
    round_lr: list[float] | None = _knob(None, "iterative: start LR per round (default: lr)")
    round_lr_end: list[float] = _knob(
        help="iterative: end LR per round", factory=lambda: [5e-4, 2e-4] + [1e-4] * 7
    )


@dataclass
class PruneConfig:
    """Which pruner, how sparse, and on what data."""

    method: str = _knob("sfpk", "pruning method (sfpk methods)", flag="method")
    sparsity: float = _knob(0.95, "fraction of prunable weights REMOVED, in (0, 1)")
    scope: str = _knob("global", "global or local (per-layer) top-k")
    structure: str = _knob("unstructured", "unstructured, filter or channel masks")
    rounds: int | None = _knob(None, "pruning rounds K (default: oneshot 1, iterative 10)")
    batch_size: int = _knob(512, "pruning batch size", flag="prune-batch-size")
    num_samples: int | None = _knob(
        None, "pruning-data budget: training samples used (default all)", flag="prune-samples"
    )
    include_bias: bool = _knob(False, "also prune linear biases (as the reference)")
    exclude: list[str] = _knob(help="parameter names (globs) never pruned", factory=list)
    bn_batches: int = _knob(2, "batches for BatchNorm recalibration after pruning")
    options: dict[str, Any] = _knob(
        help="method option, e.g. num_steps=40 (repeatable; see `sfpk methods`)",
        flag="option",
        factory=dict,
    )


@dataclass
class RunConfig:
    """Where results go, seeds, device, logging and checkpoints."""

    out: str | None = _knob(None, "run directory")
    seed: int = _knob(0, "seed of every random number generator")
    device: str = _knob("auto", "auto (CUDA if available), cpu, cuda, cuda:N")
    quiet: bool = _knob(False, "no progress bars")
    tensorboard: bool = _knob(False, "also log to TensorBoard (extra sfpk[tensorboard])")
    plots: bool = _knob(True, "draw figures into plots/ at the end")
    checkpoint_every_steps: int = _knob(10, "checkpoint SFPK/SpODE every k steps (0: off)")


@dataclass
class Config:
    """Everything one run needs; ``pipeline`` is set by the subcommand."""

    pipeline: str = "oneshot"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def optimizer_options(self, phase: str) -> OptimizerOptions:
        """The Trainer options of ``"pretrain"`` or fine-tuning (``"train"``)."""
        section = self.pretrain if phase == "pretrain" else self.train
        return OptimizerOptions(
            optimizer=section.optimizer,  # type: ignore[arg-type]
            momentum=section.momentum,
            nesterov=section.nesterov,
            weight_decay=section.weight_decay,
            label_smoothing=section.label_smoothing,
            grad_accum_steps=section.grad_accum_steps,
            grad_clip=section.grad_clip,
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


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, rejecting keys ``base`` does not have."""
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {name!r}{hint}")
        section = tuple(name.split("."))
        if section in _OPTION_DICTS:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping of option names to values")
            base[key] = {**base[key], **value}
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping (a config section)")
            _merge(base[key], value, prefix=f"{name}.")
        else:
            base[key] = value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the annotated type ``hint``, or ConfigError."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is list:
        items = value if isinstance(value, list | tuple) else [value]
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                return float(value)  # YAML 1.1 reads 1e-2 as a string
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{name}={value!r} must be of type {getattr(hint, '__name__', hint)}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint, value, name = hints[f.name], data[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            values[f.name] = _from_dict(hint, value, prefix=f"{name}.")
        else:
            values[f.name] = _coerce(name, value, hint)
    return cls(**values)


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"prune.sparsity": 0.9}`` -> ``{"prune": {"sparsity": 0.9}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def build_config(
    pipeline: str,
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
    file_data = _read_yaml(yaml_path) if yaml_path is not None else {}
    file_data.pop("pipeline", None)
    user = _nest(overrides or {})
    layers = [file_data, user]
    if demo:
        layers.insert(0, demo_preset())
    data = config_to_dict(Config(pipeline=pipeline))
    for layer in layers:
        _merge(data, copy.deepcopy(layer))
    config = _from_dict(Config, data)
    if config.prune.rounds is None:
        config.prune.rounds = 10 if pipeline == "iterative" else 1
    # Input paths are made absolute here, so the saved config.yaml (what `sfpk resume DIR`
    # reads) names the same files whatever the working directory of the resume.
    if config.model.checkpoint is not None:
        config.model.checkpoint = os.path.abspath(os.path.expanduser(config.model.checkpoint))
    # $SFPK_DATA is frozen into the config for the same reason: a resume in another
    # environment must read the data the run started with.
    data_dir = config.data.data_dir or os.environ.get("SFPK_DATA") or None
    if data_dir is not None and config.data.dataset not in EMBEDDED_DATASETS:
        config.data.data_dir = os.path.abspath(os.path.expanduser(data_dir))
    validate(config, check_paths=check_paths)
    return config


def load_config(path: str | Path, *, check_paths: bool = True) -> Config:
    """Read back a resolved ``config.yaml`` (as written by :func:`save_config`)."""
    data = _read_yaml(path)
    pipeline = data.get("pipeline", "oneshot")
    return build_config(pipeline, yaml_path=path, check_paths=check_paths)
