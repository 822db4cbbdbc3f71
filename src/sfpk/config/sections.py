"""The config's sections: one dataclass each for data, model, pretrain, train, prune and run.

Each section declares its knobs with :func:`_knob` (help text, command-line flag, range) and
checks its own values when it is built (``__post_init__``: :func:`sfpk.errors.check_fields`
checks each field's type, finiteness and ``_knob`` range, docs/reliability.md). The rules
between sections, and the building from defaults, YAML and flags, are :mod:`sfpk.config.core`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError, bounds, check_fields, check_fraction, check_positive
from ..masks.core import Scope
from ..masks.prunable import Structure, check_structure
from ..prune_args import SEED_MAX
from ..selection.aligned import check_round_to
from ..selection.collapse import Guard
from ..training.optimizers import OptimizerConfig
from ..training.precision import Precision
from ..training.schedules import PRETRAIN_LR_MIN

__all__ = [
    "PRETRAIN_DEFAULTS",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "TrainConfig",
    "PruneConfig",
    "RunConfig",
]


def _knob(
    default: Any = None,
    help: str = "",
    *,
    flag: str | None = None,
    factory: Any = None,
    **limits: float,
):
    """A config field with its help text, (optionally) its CLI flag name and its range
    (:func:`sfpk.errors.bounds` keywords ``ge``, ``gt``, ``le``, ``lt``)."""
    metadata = {"help": help, "flag": flag, **bounds(**limits)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Which data set, where, and how it is split and loaded."""

    dataset: str = _knob(
        "cifar100", "data set name (sfpk datasets), or text:<file or folder>", flag="data"
    )
    data_dir: str | None = _knob(None, "folder of on-disk data sets (default $SFPK_DATA)")
    num_workers: int | None = _knob(
        None,
        "DataLoader worker processes (default: 0 for in-memory data, else one per spare core "
        "up to 8)",
        ge=0,
    )
    val_fraction: float = _knob(
        0.1, "fraction of the training split held out for validation (text: see splits)"
    )
    augment: bool = _knob(True, "training augmentation (image data sets)")
    eval_batch_size: int = _knob(256, "batch size of validation / test evaluation", ge=1)
    options: dict[str, Any] = _knob(
        help="data set option, e.g. block_size=256, tokenizer=PATH, splits=[0.9,0.05,0.05] "
        "(repeatable; text data sets, docs/data.md)",
        flag="data-option",
        factory=dict,
    )

    def __post_init__(self) -> None:
        check_fields(self, prefix="data.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"data.val_fraction={self.val_fraction!r} must be in (0, 1): model "
                "selection uses the validation split, never the test split"
            )


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

    def __post_init__(self) -> None:
        check_fields(self, prefix="model.")


# Pretraining's defaults where they differ from fine-tuning's (reference CIFAR recipe, §5.7).
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 200,
    "lr": 0.05,
    "lr_min": PRETRAIN_LR_MIN,
    "nesterov": True,
    "weight_decay": 5e-4,
}


@dataclass(frozen=True)
class PretrainConfig(OptimizerConfig):
    """Dense pretraining (reference CIFAR recipe, spec §5.7); flags are --pretrain-*.

    Its fields are :class:`sfpk.training.optimizers.OptimizerConfig`'s, declared once there
    (see that class for why it is inherited). The defaults in which pretraining differs are
    :data:`PRETRAIN_DEFAULTS`, applied by :class:`Config` when it builds its default
    section: ``Config().pretrain`` holds the pretraining recipe, while a bare
    ``PretrainConfig()`` holds the shared defaults. Redeclaring those fields here only to
    change their defaults would repeat them. Frozen, like the Trainer options it is.
    """

    key_prefix: ClassVar[str] = "pretrain."

    def __post_init__(self) -> None:
        check_fields(self, prefix="pretrain.")
        super().__post_init__()
        check_positive("pretrain.epochs", self.epochs)


@dataclass(frozen=True)
class TrainConfig(OptimizerConfig):
    """Fine-tuning of the pruned network (final phase and iterative rounds).

    The training fields (``epochs``, ``lr``, ``momentum``, ...) are
    :class:`sfpk.training.optimizers.OptimizerConfig`'s;
    the fields below are the fine-tuning schedule's.
    """

    key_prefix: ClassVar[str] = "train."

    warmup_epochs: int = _knob(5, "one-shot linear warm-up epochs (iterative: none)", ge=0)
    cold_start_lr: float = _knob(1e-4, "LR at the start of the warm-up", gt=0)
    fixed_lr_epochs: int = _knob(0, "final epochs held at the cosine floor", ge=0)
    report_last_k: int = _knob(5, "report the mean test accuracy of the last k epochs", ge=1)
    round_epochs: list[int] | None = _knob(
        None,
        "iterative: fine-tuning epochs after each round but the last (K-1 or 1 values; "
        "default: the reference's 10-round schedule resampled to K-1)",
        ge=0,
    )
    round_lr: list[float] | None = _knob(None, "iterative: start LR per round (default: lr)", gt=0)
    round_lr_end: list[float] | None = _knob(
        None,
        "iterative: end LR per round (default: the reference's, resampled to K-1)",
        gt=0,
    )

    def __post_init__(self) -> None:
        check_fields(self, prefix="train.")
        super().__post_init__()


@dataclass
class PruneConfig:
    """Which pruner, how sparse, and on what data."""

    method: str = _knob("sfpk", "pruning method (sfpk methods)", flag="method")
    sparsity: float = _knob(0.95, "fraction of prunable weights REMOVED, in (0, 1)")
    scope: Scope | None = _knob(
        None, "global, local (per layer) or row (per output row) top-k; default: the method's"
    )
    structure: Structure = _knob(
        "unstructured",
        "unstructured, filter, channel, head, neuron, head+neuron (transformer attention heads"
        " and MLP neurons) or N:M (e.g. 2:4) masks",
    )
    rounds: int | None = _knob(None, "pruning rounds K (default: oneshot 1, iterative 10)", ge=1)
    batch_size: int = _knob(512, "pruning batch size", flag="prune-batch-size", ge=1)
    num_samples: int | None = _knob(
        None,
        "pruning-data budget: training samples used (default all)",
        flag="prune-samples",
        ge=1,
    )
    include_bias: bool = _knob(False, "also prune linear biases (as the reference)")
    collapse_guard: Guard = _knob(
        "row", "keep >= 1 weight per output row (row), per layer (layer) or none (off)"
    )
    protect_output: bool = _knob(
        True,
        "filter masks leave the layer producing the model's output (its classes) unpruned",
    )
    round_to: int | None = _knob(
        None,
        "filter/channel/coupled: every layer or channel group keeps a multiple of K "
        "filters/channels, or all (CPU-friendly slim widths; default: no rounding)",
        ge=1,
    )
    exclude: list[str] = _knob(help="parameter names (globs) never pruned", factory=list)
    bn_batches: int = _knob(2, "batches for BatchNorm recalibration after pruning", ge=0)
    options: dict[str, Any] = _knob(
        help="method option, e.g. num_steps=40 (repeatable; see `sfpk methods`)",
        flag="option",
        factory=dict,
    )

    def __post_init__(self) -> None:
        check_fields(self, prefix="prune.")
        check_fraction("prune.sparsity", self.sparsity)
        check_structure(self.structure)
        check_round_to(self.round_to, self.structure, name="prune.round_to")


@dataclass
class RunConfig:
    """Where results go, seeds, device, logging and checkpoints."""

    out: str | None = _knob(None, "run directory")
    seed: int = _knob(0, "seed of every random number generator", ge=0, le=SEED_MAX)
    device: str = _knob("auto", "auto (CUDA if available), cpu, cuda, cuda:N")
    quiet: bool = _knob(False, "no progress bars")
    tensorboard: bool = _knob(False, "also log to TensorBoard (extra sfpk[tensorboard])")
    plots: bool = _knob(True, "draw figures into plots/ at the end")
    checkpoint_every_steps: int = _knob(10, "checkpoint SFPK/SpODE every k steps (0: off)", ge=0)
    precision: Precision = _knob(
        "fp32", "fp32, bf16 or fp16 (GPU) autocast for training and the pruning passes"
    )
    channels_last: bool = _knob(False, "channels-last memory layout for conv nets")
    compile: bool = _knob(False, "train through torch.compile (falls back with a warning)")

    def __post_init__(self) -> None:
        check_fields(self, prefix="run.")
