"""The run directory: resolved config, metrics, checkpoints, final artifacts, summary.

Layout of ``--out DIR`` (design.md, "A Run directory is self-describing")::

    config.yaml          the fully resolved config (what `sfpk resume DIR` reads back)
    metrics.csv          one row per epoch / pruning round, appended and flushed as it goes
                         (val_ppl / test_ppl: perplexities, language-model runs only)
    checkpoints/         the latest checkpoint (see sfpk.training.checkpoint), best dense weights
    dense.safetensors    the dense (pretrained, best-on-validation) model, when pretrained here
    model.safetensors    the final model (pruned weights are exact zeros)
    masks.safetensors    the final masks
    sfpk_steps.csv       per-step history of SFPK / SpODE pruning calls
    summary.json         the reported numbers
    status.json          only after a failure or an interrupt: {"status", "error", ...}
    plots/               figures, by ``sfpk.pipelines.plots.make_run_plots(run_dir)`` if available
    events/              TensorBoard logs with ``--tensorboard``

:func:`export_run` exports a finished run's model (``sfpk export``, :func:`sfpk.export`).

Under ``torchrun`` every rank holds a :class:`Run` for the same directory, but only rank 0
writes (:attr:`Run.writer`): on the other ranks every writing method is a no-op, so the
pipelines call them unconditionally.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from .. import data, models
from ..config.core import Config, load_config, save_config
from ..deploy.export import MASKS_FILE, MODEL_FILE, Architecture, ExportOptions, export
from ..errors import CheckpointError, ConfigError, DataError, SfpkError
from ..masks.core import Masks, load_masks
from ..training import distributed
from ..training.checkpoint import checkpoint_names, save_state_dict, write_checkpoint

__all__ = [
    "METRIC_COLUMNS",
    "STATUS_FILE",
    "Run",
    "check_finished_run",
    "export_run",
    "read_status",
    "run_architecture",
    "write_rows_csv",
]

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "phase",
    "round",
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "val_ppl",
    "test_ppl",
    "sparsity",
    "seconds",
)

STATUS_FILE = "status.json"  # only while a run has failed or was interrupted

_TENSORBOARD_COLUMNS = (
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_acc",
    "val_ppl",
)


def write_rows_csv(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write dict rows to CSV (columns: the union of keys, in first-seen order), atomically."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


class Run:
    """One run directory. Create it with :meth:`create`, reopen it with :meth:`open`.

    Only this class writes files into the directory, and only on the main process
    (:attr:`writer`: rank 0 under ``torchrun``, always in a single process).
    """

    def __init__(self, directory: Path, config: Config) -> None:
        self.directory = directory
        self.config = config
        self.writer = distributed.is_main()
        self._tensorboard: Any = None
        self._tb_step = 0
        if config.run.tensorboard and self.writer:
            self._tensorboard = _tensorboard_writer(directory / "events")

    # -- paths --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.directory / "metrics.csv"

    @property
    def checkpoints_dir(self) -> Path:
        return self.directory / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.directory / "summary.json"

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, config: Config, *, overwrite: bool = False) -> Run:
        """Make ``config.run.out`` a fresh run directory and write ``config.yaml``.

        Under ``torchrun`` rank 0 alone checks and creates the folder, then tells the other
        ranks whether it succeeded, so that they raise too instead of waiting for it.

        Raises:
            ConfigError: no ``run.out``, or the folder already holds a run (unless
                ``overwrite``) or other files.
            SfpkError: on ranks other than 0, when rank 0 failed (its message).
        """
        if config.run.out is None:
            raise ConfigError("run.out is not set: pass --out DIR (where the run is written)")
        _on_rank_0(lambda: cls._make_directory(config, overwrite=overwrite))
        return cls(Path(config.run.out), config)

    @classmethod
    def check_new(cls, config: Config, *, overwrite: bool = False) -> None:
        """:meth:`check_out` on rank 0, its refusal shared with every rank (as :meth:`create`)."""
        _on_rank_0(lambda: cls.check_out(config, overwrite=overwrite))

    @staticmethod
    def check_out(config: Config, *, overwrite: bool = False) -> bool:
        """Check that ``config.run.out`` can become a new run directory; change nothing.

        A folder holding a run that failed before its first checkpoint may be reused (it
        has nothing to resume), so the corrected command can be rerun as it is.

        Returns:
            Whether an existing folder will be replaced.

        Raises:
            ConfigError: no ``run.out``; a non-empty folder that is not a run; an existing
                run (unless ``overwrite``), with what to do, and its error if it failed.
        """
        if not config.run.out:
            raise ConfigError("no run directory: pass --out DIR (or run.out in the config)")
        directory = Path(config.run.out)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"--out {str(directory)!r} is a file, not a folder")
        if not directory.exists() or not any(directory.iterdir()):
            return False
        if not (directory / "config.yaml").is_file():
            raise ConfigError(f"--out {str(directory)!r} is a non-empty non-run folder")
        status = read_status(directory)
        checkpoints = checkpoint_names(directory / "checkpoints")
        if overwrite or (status.get("status") == "failed" and not checkpoints):
            return True
        failed = f" (it failed: {status.get('error')})" if status.get("status") == "failed" else ""
        raise ConfigError(
            f"run directory {str(directory)!r} already exists{failed}; continue it with "
            f"`sfpk resume {directory}` or pass --overwrite to start over"
        )

    @classmethod
    def _make_directory(cls, config: Config, *, overwrite: bool) -> None:
        directory = Path(config.run.out or "")
        if cls.check_out(config, overwrite=overwrite):
            log.info("replacing the run directory %s", directory)
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(config, directory / "config.yaml")
        with (directory / "metrics.csv").open("w", newline="") as handle:
            csv.writer(handle).writerow(METRIC_COLUMNS)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Run:
        """Reopen an existing run directory (for ``sfpk resume``).

        Raises:
            CheckpointError: the folder is not a run directory.
        """
        directory = Path(directory)
        if not (directory / "config.yaml").is_file():
            raise CheckpointError(f"{str(directory)!r} is not a run directory (no config.yaml)")
        config = load_config(directory / "config.yaml")
        config.run.out = str(directory)
        return cls(directory, config)

    def write_status(self, status: str, error: BaseException | None = None) -> None:
        """Record how the run ended in ``status.json``: ``"failed"`` (with the error and the
        checkpoint a resume would start from) or ``"interrupted"``."""
        if not self.writer:
            return
        checkpoints = checkpoint_names(self.checkpoints_dir)
        record = {
            "status": status,
            "error": None if error is None else _one_line(error),
            "error_type": None if error is None else type(error).__name__,
            "last_checkpoint": checkpoints[-1] if checkpoints else None,
        }
        tmp = self.directory / "status.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.directory / STATUS_FILE)

    def clear_status(self) -> None:
        """Remove ``status.json`` (the run finished, or a resume starts)."""
        if self.writer:
            (self.directory / STATUS_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # -- metrics ------------------------------------------------------------------------
    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.csv`` (flushed at once) and to TensorBoard."""
        unknown = set(row) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric columns {sorted(unknown)}")
        if not self.writer:
            return
        values = [_format(row.get(column)) for column in METRIC_COLUMNS]
        with self.metrics_path.open("a", newline="") as handle:
            csv.writer(handle).writerow(values)
            handle.flush()
        if self._tensorboard is not None:
            tag = f"{row.get('phase')}"
            for column in _TENSORBOARD_COLUMNS:
                value = row.get(column)
                if isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"{tag}/{column}", value, self._tb_step)
            self._tb_step += 1

    def metric_rows(self) -> list[dict[str, str]]:
        """The rows of ``metrics.csv`` as string dicts."""
        with self.metrics_path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_metrics(self, num_rows: int) -> None:
        """Keep the first ``num_rows`` rows (drop those logged after the last checkpoint)."""
        self._tb_step = num_rows
        if not self.writer:
            return
        rows = self.metric_rows()[:num_rows]
        tmp = self.metrics_path.with_name("metrics.csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_path)

    # -- checkpoints and results --------------------------------------------------------
    def write_checkpoint(
        self, model: nn.Module, masks: Masks | None, state: dict[str, Any]
    ) -> None:
        """Write a checkpoint of ``model``, ``masks`` and ``state`` (``training.checkpoint``)."""
        if self.writer:
            write_checkpoint(self.checkpoints_dir, model=model, masks=masks, state=state)

    def save_weights(self, model: nn.Module, path: str | Path) -> Path:
        """Save ``model``'s state dict to ``path`` (relative to the run directory)."""
        path = self.directory / path
        if self.writer:
            save_state_dict(model, path)
        return path

    def save_masks(self, masks: Masks, path: str | Path = "masks.safetensors") -> Path:
        """Save ``masks`` to ``path`` (relative to the run directory)."""
        path = self.directory / path
        if self.writer:
            masks.save(path)
        return path

    def write_rows(self, path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
        """Write dict rows to the CSV file ``path`` (relative to the run directory)."""
        path = self.directory / path
        if self.writer:
            write_rows_csv(path, rows)
        return path

    def write_text(self, path: str | Path, text: str) -> Path:
        """Write ``text`` to ``path`` (relative to the run directory), e.g. a marker file."""
        path = self.directory / path
        if self.writer:
            path.write_text(text)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json`` (atomically)."""
        if not self.writer:
            return self.summary_path
        tmp = self.summary_path.with_name("summary.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        os.replace(tmp, self.summary_path)
        return self.summary_path

    def make_plots(self) -> None:
        """Call ``sfpk.pipelines.plots.make_run_plots(run_dir)`` when that module exists.

        A plotting failure is logged, not raised: the run's numbers are already written.
        """
        if not self.writer:
            return
        try:
            plots = importlib.import_module("sfpk.pipelines.plots")
        except ModuleNotFoundError as exc:
            if exc.name == "sfpk.pipelines.plots":
                return
            raise
        hook = getattr(plots, "make_run_plots", None)
        if hook is None:
            return
        (self.directory / "plots").mkdir(exist_ok=True)
        try:
            hook(self.directory)
        except Exception:  # noqa: BLE001 - see docstring
            log.warning("making plots failed", exc_info=True)


def _on_rank_0(body: Any) -> None:
    """Run ``body`` on rank 0 and share its failure: rank 0 raises it, the others an
    SfpkError quoting it (so no rank waits for one that has stopped)."""
    error: Exception | None = None
    if distributed.is_main():
        try:
            body()
        except (SfpkError, OSError) as exc:
            error = exc
    message = distributed.broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise SfpkError(f"rank 0 could not create the run directory: {message}")


def read_status(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``status.json`` of a run directory (``{}`` when there is none or it is unreadable)."""
    path = Path(directory) / STATUS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, SfpkError) else f"{type(error).__name__}: {text}"


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def _json_default(value: Any) -> Any:
    # tolist() first: it turns a tensor or array of any size into (nested) Python numbers
    # (a scalar one into a number), while item() raises on more than one element.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'sfpk[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(path))


# Exporting a finished run (``sfpk export``): the run's architecture, then sfpk.export.


def run_architecture(config: Config, *, num_classes: int | None = None) -> Architecture:
    """The architecture of a run, from its config (and its data set, for ``num_classes``).

    The model is built as :class:`sfpk.pipelines.context.Context` builds it; the number of
    classes comes from loading the run's data set unless ``num_classes`` is given.

    Raises:
        DataError: the data set cannot be loaded here (the message suggests ``num_classes``).
    """
    input_shape = data.dataset_spec(config.data.dataset).input_shape
    if num_classes is None:
        try:
            splits = data.load_dataset(
                config.data.dataset,
                data_dir=config.data.data_dir,
                seed=config.run.seed,
                val_fraction=config.data.val_fraction,
                augment=False,
                **config.data.options,  # e.g. a text data set's tokenizer sets its vocabulary
            )
        except DataError as exc:
            raise DataError(
                f"cannot read the run's data set to count its classes ({exc}); "
                f"give the number of classes (--num-classes N)"
            ) from exc
        num_classes, input_shape = splits.num_classes, splits.input_shape
    return Architecture(
        name=config.model.name,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        options=dict(config.model.options),
    )


def check_finished_run(run: Path) -> None:
    """Raise CheckpointError unless ``run`` is a run directory whose model file is written."""
    if not run.is_dir():
        raise CheckpointError(f"run directory {str(run)!r} does not exist")
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{str(run)!r} is not a run directory (no config.yaml)")
    if not (run / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{str(run)!r} has no {MODEL_FILE}: the run has not finished "
            f"(continue it with `sfpk resume {run}`)"
        )


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: ExportOptions | None = None,
    num_classes: int | None = None,
    **keywords: Any,
) -> Path:
    """Export the final model and masks of a finished run directory (see :func:`export`).

    Args:
        run_dir: a run directory with ``config.yaml`` and ``model.safetensors`` (and
            ``masks.safetensors`` for a pruned run).
        out: output folder (not the run directory).
        options: how to write it (:class:`sfpk.deploy.export.ExportOptions`: ``sparse``,
            ``slim`` for structured runs, ``format``, ``semi_structured`` for 2:4 runs,
            ``overwrite`` an earlier export in ``out``), or its fields as ``keywords``.
        num_classes: skip loading the data set to count the classes.

    Returns:
        The path of the exported ``model.safetensors`` (or ``model.onnx``).

    Raises:
        CheckpointError: no such run directory, no ``config.yaml`` or ``model.safetensors``,
            or files that do not fit the run's model.
        MaskMismatchError: the run's masks do not fit its model.
        ConfigError: an option that does not fit the run (see :func:`export`).
    """
    opts = ExportOptions.of(options, keywords)
    run = Path(run_dir)
    check_finished_run(run)
    config = load_config(run / "config.yaml", check_paths=False)
    architecture = run_architecture(config, num_classes=num_classes)
    model = models.load_weights(architecture.build(), run / MODEL_FILE)
    masks = load_masks(run / MASKS_FILE, model) if (run / MASKS_FILE).is_file() else None
    return export(model, masks, out, architecture=architecture, options=opts)
