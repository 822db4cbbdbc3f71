"""Pipelines that compose pruners, the Trainer and a Run directory: pretrain, oneshot, iterative.

``start(config)`` checks the config against its data and model, creates the run directory
and executes the pipeline named by ``config.pipeline``; ``resume(run_dir)`` continues a run
that was interrupted at any point (the result equals the uninterrupted run's, bit for bit
on CPU).

Owns the flows (:mod:`.flows`), their phases (:mod:`.phases`), the shared state of a run
(:mod:`.context`), the run directory with its summary, status and export (:mod:`.run`), and
the figures of one run and the report over many (:mod:`.plots`, :mod:`.report`). May import
every library layer (api, config, pruners, selection, masks, training, data, models,
deploy, llm), never the CLI (``tests/api/test_architecture.py``).

Example:
    >>> config = build_config("oneshot", overrides={"data.dataset": "mnist1d",
    ...     "model.name": "cnn1d", "prune.method": "mag", "run.out": "runs/x"})
    >>> summary = start(config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.core import Config
from ..errors import CheckpointError
from ..training import distributed
from ..training.checkpoint import checkpoint_names, discard_skipped, read_latest_checkpoint
from .context import Context, Prepared, prepare
from .flows import run_iterative, run_oneshot, run_pretrain, summarize
from .run import Run, read_status

__all__ = ["PIPELINES", "Context", "start", "resume", "execute", "summarize"]

log = logging.getLogger(__name__)

PIPELINES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "pretrain": run_pretrain,
    "oneshot": run_oneshot,
    "iterative": run_iterative,
}


def execute(
    run: Run, *, resume_from_checkpoint: bool = False, prepared: Prepared | None = None
) -> dict[str, Any]:
    """Run (or continue) the pipeline of ``run.config`` in ``run``; return the summary.

    However it ends, the folder says so: a failure writes ``status.json`` with the error
    (``"failed"``), an interrupt (Ctrl-C, SIGTERM under the CLI) ``"interrupted"``; a
    finished run has none.
    """
    try:
        checkpoint = None
        if resume_from_checkpoint:
            checkpoint = read_latest_checkpoint(run.checkpoints_dir)
        distributed.barrier()  # under torchrun, rank 0 replaces that checkpoint once all read it
        if checkpoint is not None and checkpoint.skipped and run.writer:
            discard_skipped(run.checkpoints_dir, checkpoint)
        if resume_from_checkpoint and checkpoint is None:  # killed before the first checkpoint
            run.truncate_metrics(0)
        ctx = Context(run, checkpoint, prepared)
        summary = PIPELINES[run.config.pipeline](ctx)
    except KeyboardInterrupt:
        run.write_status("interrupted")
        raise
    except Exception as exc:
        run.write_status("failed", exc)
        raise
    finally:
        run.close()
    run.clear_status()
    return summary


def start(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
    """Check everything, then create ``config.run.out`` and run the pipeline in it.

    The data set is loaded, the model built and the pruning setup dry-run before the folder
    is created (:func:`sfpk.pipelines.context.prepare`), so a bad setting leaves no folder.
    A failure after that leaves the folder marked failed (``status.json``); rerunning into
    a failed folder that has no checkpoint replaces it.

    Raises:
        ConfigError: no ``run.out``, or it already holds a run and ``overwrite`` is False.
    """
    Run.check_new(config, overwrite=overwrite)
    prepared = prepare(config)
    run = Run.create(config, overwrite=overwrite)
    return execute(run, prepared=prepared)


def resume(directory: str | Path, *, quiet: bool | None = None) -> dict[str, Any]:
    """Continue the run in ``directory`` from its latest checkpoint (or from the start).

    ``quiet`` overrides the saved ``run.quiet`` (progress bars only; results are unchanged).
    A run that failed before its first checkpoint is not repeated: the error says what
    failed and how to start it again. One that failed later resumes from its last
    checkpoint, with a warning that repeats the failure.

    Raises:
        CheckpointError: ``directory`` is not a run directory, its checkpoint is unreadable,
            or it failed before its first checkpoint.
    """
    run = Run.open(directory)
    status = read_status(directory)
    if status.get("status") == "failed":
        if status.get("last_checkpoint") is None and not checkpoint_names(run.checkpoints_dir):
            raise CheckpointError(
                f"run {str(directory)!r} failed before its first checkpoint, so there is "
                f"nothing to resume: {status.get('error')}; correct the command and run it "
                "again with the same --out (the failed folder is replaced)"
            )
        log.warning(
            "run %s failed last time (%s); resuming from its last checkpoint", directory,
            status.get("error"),
        )  # fmt: skip
    if quiet is not None:
        run.config.run.quiet = quiet
    return execute(run, resume_from_checkpoint=True)
