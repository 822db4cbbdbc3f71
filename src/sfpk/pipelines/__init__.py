"""Pipelines that compose pruners, the Trainer and a Run directory: pretrain, oneshot, iterative.

``start(config)`` creates the run directory and executes the pipeline named by
``config.pipeline``; ``resume(run_dir)`` continues a run that was interrupted at any point
(the result equals the uninterrupted run's, bit for bit on CPU).

Example:
    >>> config = build_config("oneshot", overrides={"data.dataset": "mnist1d",
    ...     "model.name": "cnn1d", "prune.method": "mag", "run.out": "runs/x"})
    >>> summary = start(config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import distributed
from ..checkpoint import read_latest_checkpoint
from ..config import Config
from ..errors import SfpkError
from ..run import Run
from .context import Context
from .flows import run_iterative, run_oneshot, run_pretrain, summarize

__all__ = ["PIPELINES", "Context", "start", "resume", "execute", "summarize"]

log = logging.getLogger(__name__)

PIPELINES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "pretrain": run_pretrain,
    "oneshot": run_oneshot,
    "iterative": run_iterative,
}


def execute(run: Run, *, resume_from_checkpoint: bool = False) -> dict[str, Any]:
    """Run (or continue) the pipeline of ``run.config`` in ``run``; return the summary."""
    checkpoint = read_latest_checkpoint(run.checkpoints_dir) if resume_from_checkpoint else None
    distributed.barrier()  # under torchrun, rank 0 replaces that checkpoint once all read it
    if resume_from_checkpoint and checkpoint is None:  # killed before the first checkpoint
        run.truncate_metrics(0)
    try:
        ctx = Context(run, checkpoint)
        return PIPELINES[run.config.pipeline](ctx)
    finally:
        run.close()


def start(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
    """Create ``config.run.out`` and run the pipeline ``config.pipeline`` in it.

    Raises:
        ConfigError: no ``run.out``, or it already holds a run and ``overwrite`` is False.
    """
    run = Run.create(config, overwrite=overwrite)
    try:
        return execute(run)
    except SfpkError:
        # A run refused before its first checkpoint (bad data directory, a model that does
        # not fit the data, ...) holds nothing to resume: remove it, so that the corrected
        # command can be rerun as is rather than stopping at "already exists".
        if run.writer and read_latest_checkpoint(run.checkpoints_dir) is None:
            shutil.rmtree(run.directory, ignore_errors=True)
        raise


def resume(directory: str | Path, *, quiet: bool | None = None) -> dict[str, Any]:
    """Continue the run in ``directory`` from its latest checkpoint (or from the start).

    ``quiet`` overrides the saved ``run.quiet`` (progress bars only; results are unchanged).

    Raises:
        CheckpointError: ``directory`` is not a run directory or its checkpoint is unreadable.
    """
    run = Run.open(directory)
    if quiet is not None:
        run.config.run.quiet = quiet
    return execute(run, resume_from_checkpoint=True)
