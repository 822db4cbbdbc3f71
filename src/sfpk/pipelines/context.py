"""What every pipeline phase shares: data, model, masks, progress, checkpoints.

A pipeline is a fixed sequence of named phases (``pretrain``, ``dense``, ``prune:0``,
``tune:0``, ..., ``finetune``). :class:`Progress` records which are done and where the
current one stands (epoch + optimizer state, or the pruner engine's state). It is saved in
every checkpoint together with the model, the masks and the RNG states, so re-running the
same pipeline function after a restart skips what is done and continues the rest exactly.

Every random stream is derived from ``(seed, phase, epoch)`` (:func:`sfpk.training.checkpoint.
derive_seed`): training loaders are rebuilt per epoch from such a seed, pruning loaders per
pruning call. A seeded CPU run is bit-identical whether or not it was interrupted.

Under ``torchrun`` every rank runs the whole pipeline on its own replica (training is not
data-parallel); the particle pruning calls split their passes over the ranks, and only
rank 0 writes files (:class:`sfpk.pipelines.run.Run`) and shows progress bars.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .. import api, models
from .. import data as data_module
from ..config.core import Config
from ..errors import CheckpointError, ConfigError, SfpkError, coerce
from ..index_batches import batch_taker
from ..losses import Task, task_loss
from ..masks.core import Masks
from ..prune_args import check_finite_tensors
from ..training import distributed
from ..training.checkpoint import Checkpoint, derive_seed, rng_state, seed_everything, set_rng_state
from ..training.optimizers import OptimizerConfig
from ..training.precision import check_precision
from ..training.trainer import EvalResult, Trainer, select_device
from .run import Run

__all__ = ["Progress", "Context", "Prepared", "prepare", "model_options"]

log = logging.getLogger(__name__)

_STATE_FORMAT = 1


@dataclass
class Progress:
    """How far a run got; saved in every checkpoint.

    Attributes:
        done: names of completed phases.
        current: the phase in progress: ``{"key", "epoch", "trainer"}`` for training,
            ``{"key", "pruner"}`` for a pruning call that checkpoints its steps (the
            state its observer received); None between phases.
        records: per training phase, one ``{"epoch", "val_acc", "test_acc"}`` per epoch.
        results: numbers for ``summary.json`` gathered so far.
        history: per-step rows of the pruning calls (``PruneResult.history``).
        pruner_state: the last pruning call's ``PruneResult.state``, which the next call
            continues from (None for stateless methods).
        metric_rows: rows of ``metrics.csv`` covered by this checkpoint.
        seconds: wall time spent up to this checkpoint (over all processes).
    """

    done: list[str] = field(default_factory=list)
    current: dict[str, Any] | None = None
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    pruner_state: Any = None
    metric_rows: int = 0
    seconds: float = 0.0


def _worker_count(configured: int | None, dataset: Any) -> int:
    """DataLoader workers: as configured, else 0 for data batched in memory by slicing (a
    worker would only add copies) and one per spare core of this rank (up to 8) for data
    read and decoded per item (image folders)."""
    if configured is not None:
        return configured
    if batch_taker(dataset) is not None:
        return 0
    cores = (os.cpu_count() or 1) // max(1, distributed.world_size())
    return max(1, min(8, cores - 1))


class Context:
    """The model, data, masks and progress of one pipeline execution.

    Args:
        run: the run directory (its config drives everything).
        checkpoint: the checkpoint to resume from, or None for a fresh start.
    """

    def __init__(
        self, run: Run, checkpoint: Checkpoint | None = None, prepared: Prepared | None = None
    ) -> None:
        self.run = run
        self.config = cfg = run.config
        self.seed = cfg.run.seed
        self.device = select_device(cfg.run.device)
        if distributed.is_distributed() and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's GPU
        self.show_progress = not cfg.run.quiet and distributed.is_main()
        prepared = prepared if prepared is not None else prepare(cfg)
        self.splits = prepared.splits
        self.task: Task = self.splits.task
        self.loss_fn = task_loss(self.task)
        self.model = prepared.model
        self.masks: Masks | None = None
        self.progress = Progress()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.model.to(self.device)
        if self.masks is not None:
            self.masks = self.masks.to(self.device)
        self._started = time.perf_counter()
        self._base_seconds = self.progress.seconds
        self.num_workers = _worker_count(cfg.data.num_workers, self.splits.train)
        self.val_loader = self._eval_loader(self.splits.val)
        self.test_loader = self._eval_loader(self.splits.test)

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        try:
            self.model.load_state_dict(checkpoint.model_state)
        except RuntimeError as exc:  # config.yaml no longer describes the checkpointed model
            first = str(exc).strip().splitlines()[1:2] or [str(exc)]
            raise CheckpointError(
                f"checkpoint {str(checkpoint.path)!r} does not fit the model of config.yaml "
                f"({self.config.model.name}): {first[0].strip()[:200]}"
            ) from exc
        if checkpoint.masks is not None:
            self.masks = checkpoint.masks
        self.progress = Progress(**_upgrade_progress(state["progress"]))
        set_rng_state(state["rng"])
        self.run.truncate_metrics(self.progress.metric_rows)
        log.info("resuming after %s", ", ".join(self.progress.done) or "(start)")

    # -- data ---------------------------------------------------------------------------
    def _eval_loader(self, dataset: Any) -> DataLoader:
        """The evaluation loader; under torchrun, this rank's contiguous share (the Trainer
        sums the shares, so every rank gets the single-process figures)."""
        if distributed.is_distributed():
            dataset = Subset(dataset, range(*distributed.shard_bounds(len(dataset))))
        return data_module.make_loader(
            dataset,
            batch_size=self.config.data.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def train_loader(self, key: str, epoch: int, batch_size: int) -> DataLoader:
        """The shuffled training loader of ``epoch`` of phase ``key``; also seeds torch.

        Both the sample order and the augmentation randomness derive from ``(seed, key,
        epoch)``, so a resumed epoch replays exactly.
        """
        epoch_seed = derive_seed(self.seed, key, epoch)
        torch.manual_seed(epoch_seed)
        world = distributed.world_size()
        if world > 1:  # data parallel: each rank takes its 1/K of every global batch
            if batch_size % world:
                raise ConfigError(
                    f"batch size {batch_size} does not split over {world} ranks; give a "
                    f"multiple of {world} so that the global batch stays {batch_size}"
                )
            sampler = DistributedSampler(
                self.splits.train, num_replicas=world, rank=distributed.rank(), seed=epoch_seed
            )
            return data_module.make_loader(
                self.splits.train,
                batch_size=batch_size // world,
                shuffle=False,
                seed=epoch_seed,
                num_workers=self.num_workers,
                sampler=sampler,
            )
        return data_module.make_loader(
            self.splits.train,
            batch_size=batch_size,
            shuffle=True,
            seed=epoch_seed,
            num_workers=self.num_workers,
        )

    def pruning_loader(self, key: str) -> DataLoader:
        """The pruning data of call ``key``: a seeded loader over the pruning-data budget."""
        cfg = self.config.prune
        dataset = self.splits.train
        if cfg.num_samples is not None and cfg.num_samples < len(dataset):
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "pruning-subset"))
            order = torch.randperm(len(dataset), generator=generator)[: cfg.num_samples]
            dataset = Subset(dataset, sorted(order.tolist()))
        return data_module.make_loader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=derive_seed(self.seed, key),
            num_workers=self.num_workers,
        )

    def trainer(self, options: OptimizerConfig, *, masks: Masks | None = None) -> Trainer:
        """A Trainer of the model for this run's task (loss and metrics by data set)."""
        return Trainer(
            self.model,
            options,
            device=self.device,
            masks=masks,
            progress=self.show_progress,
            task=self.task,
            precision=self.config.run.precision,
            channels_last=self.config.run.channels_last,
            compile=self.config.run.compile,
        )

    def evaluate(self, trainer: Trainer | None = None) -> tuple[EvalResult, EvalResult]:
        """Validation and test results of the current model (on every rank alike)."""
        trainer = trainer or self.trainer(self.config.train)
        sharded = distributed.is_distributed()
        return (
            trainer.evaluate(self.val_loader, sharded=sharded),
            trainer.evaluate(self.test_loader, sharded=sharded),
        )

    # -- bookkeeping --------------------------------------------------------------------
    def seconds(self) -> float:
        """Wall time of the run so far, over all its processes (up to their checkpoints)."""
        return self._base_seconds + time.perf_counter() - self._started

    def log_row(self, row: dict[str, Any]) -> None:
        """Append a metrics row and count it."""
        self.run.log_metrics(row)
        self.progress.metric_rows += 1

    def checkpoint(self) -> None:
        """Write the model, masks, progress and RNG states atomically."""
        self.progress.seconds = self.seconds()
        state = {"format": _STATE_FORMAT, "progress": vars(self.progress), "rng": rng_state()}
        self.run.write_checkpoint(self.model, self.masks, state)

    def complete(self, key: str) -> None:
        """Mark phase ``key`` done and checkpoint."""
        self.progress.done.append(key)
        self.progress.current = None
        self.checkpoint()

    def current(self, key: str) -> dict[str, Any] | None:
        """The saved in-progress state of phase ``key``, if the run stopped inside it."""
        current = self.progress.current
        return current if current is not None and current.get("key") == key else None


@dataclass
class Prepared:
    """The data and the model of a run, built (and checked) before its folder exists."""

    splits: data_module.DataSplits
    model: torch.nn.Module


def prepare(config: Config) -> Prepared:
    """Seed, load the data and build the model of ``config``; dry-run the pruning setup.

    Everything that can be wrong with a config but only shows once the data and model
    exist is found here, before :func:`sfpk.pipelines.start` creates the run folder:
    model options the builder rejects, dense weights that do not fit or hold NaN, ``include``
    / ``exclude`` patterns that leave nothing to prune, a structure the model cannot take.
    The random draws are those of a direct start, so a prepared run is bit-identical.

    Raises:
        ConfigError: with the setting at fault; NonFiniteError: non-finite dense weights.
    """
    check_precision(config.run.precision, select_device(config.run.device))
    seed_everything(config.run.seed)
    splits = data_module.load_dataset(
        config.data.dataset,
        data_dir=config.data.data_dir,
        seed=config.run.seed,
        val_fraction=config.data.val_fraction,
        augment=config.data.augment,
        **config.data.options,
    )
    options = _typed_model_options(
        config.model.name, model_options(config.model.name, config.model.options, splits)
    )
    try:
        model = models.create(
            config.model.name,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            **options,
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, SfpkError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"model {config.model.name!r} cannot be built with options {options!r}: {first}"
        ) from exc
    if config.model.checkpoint is not None:
        models.load_weights(model, config.model.checkpoint)
    where = "model weights"
    if config.model.checkpoint is not None:
        where = f"model.checkpoint {config.model.checkpoint}"
    check_finite_tensors(dict(model.named_parameters()), where=where)
    if config.pipeline != "pretrain":
        _dry_run_pruning(config, model, splits.train)
    return Prepared(splits, model)


def _typed_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model options checked against the registered builder's annotations (types, finite
    numbers, ``hidden: Sequence[int]`` a list of ints); external models check their own."""
    if models.is_external(name):
        return options
    builder = models.model_builder(name)
    try:
        hints = typing.get_type_hints(builder)
    except (NameError, TypeError):
        return options
    return {k: coerce(f"model option {k}", v, hints.get(k, Any)) for k, v in options.items()}


def _dry_run_pruning(config: Config, model: torch.nn.Module, train: Any) -> None:
    """Check the pruning arguments against the model, as every round will pass them
    (one training item, for structures that trace the model)."""
    cfg = config.prune
    item = train[0]
    api.check_pruning(
        model,
        method=cfg.method,
        sparsity=cfg.sparsity,
        scope=cfg.scope,
        structure=cfg.structure,
        seed=config.run.seed,
        exclude=cfg.exclude or None,
        include_bias=cfg.include_bias,
        collapse_guard=cfg.collapse_guard,
        protect_output=cfg.protect_output,
        round_to=cfg.round_to,
        data=[(item[0].unsqueeze(0), torch.as_tensor(item[1]).unsqueeze(0))],
        **cfg.options,
    )


def model_options(
    name: str, options: dict[str, Any], splits: data_module.DataSplits
) -> dict[str, Any]:
    """The model builder's options, with the vocabulary size of a language-model data set.

    ``num_classes`` is always the data set's (for language models: the vocabulary size).
    A registered builder that takes ``vocab_size`` also gets it as that option, unless the
    config sets it; a set value smaller than the vocabulary is refused (token ids would
    index past the embedding). External models (``hf:``, ``tv:``) get only ``num_classes``:
    their vocabulary is their own.

    Raises:
        ConfigError: ``vocab_size`` is smaller than the data set's vocabulary.
    """
    vocab = splits.vocab_size
    if vocab is None:
        return dict(options)
    given = options.get("vocab_size")
    if given is not None and given < vocab:
        raise ConfigError(
            f"model option vocab_size={given!r} is smaller than the vocabulary of "
            f"{splits.name!r} ({vocab} tokens)"
        )
    if given is None and not models.is_external(name):
        parameters = inspect.signature(models.model_builder(name)).parameters
        if "vocab_size" in parameters:
            return {**options, "vocab_size": vocab}
    return dict(options)


def _upgrade_progress(progress: dict[str, Any]) -> dict[str, Any]:
    """Read progress saved by sfpk 0.1.0, whose names for the pruner state differed."""
    progress = dict(progress)
    if "continue_from" in progress:
        progress["pruner_state"] = progress.pop("continue_from")
    current = progress.get("current")
    if current is not None and "engine" in current:
        progress["current"] = {**current, "pruner": current["engine"]}
        del progress["current"]["engine"]
    return progress
