"""The building blocks of the pipelines: a training phase, a dense evaluation, a pruning round.

Each phase is resumable: it skips itself when done and continues from
``Context.current(key)`` when the run stopped inside it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import api
from ..errors import SfpkError
from ..losses import Task, perplexity
from ..masks.core import Masks
from ..pruners import PruneObserver, StartState
from ..selection.topk import round_sparsity
from ..training import distributed
from ..training.batchnorm import recalibrate_bn
from ..training.checkpoint import derive_seed, load_state_dict_file
from ..training.optimizers import OptimizerConfig
from ..training.schedules import PRETRAIN_LR_MIN, pretrain_lr
from ..training.trainer import EvalResult
from .context import Context

__all__ = [
    "train_phase",
    "pretrain_phase",
    "dense_phase",
    "prune_round",
    "best_record",
    "eval_columns",
    "round_sparsity",
]

log = logging.getLogger(__name__)


def best_record(records: list[dict[str, Any]], task: Task = "classification") -> dict[str, Any]:
    """The best-on-validation record (the earliest one on ties); test never selects.

    Classification: the highest validation accuracy. Language models and denoisers: the
    lowest validation loss (the lowest perplexity; the lowest ε-MSE).
    """
    if task == "classification":
        return max(records, key=lambda r: (r["val_acc"], -r["epoch"]))
    if task in ("language_model", "denoise"):
        return max(records, key=lambda r: (-r["val_loss"], -r["epoch"]))
    raise SfpkError(f"task={task!r} has no model-selection rule")


def eval_columns(task: Task, val: EvalResult, test: EvalResult) -> dict[str, Any]:
    """The validation / test columns of a metrics row (perplexities for language models)."""
    row = {"val_loss": val.loss, "val_acc": val.top1, "test_loss": test.loss, "test_acc": test.top1}
    if task == "language_model":
        row.update(val_ppl=val.perplexity, test_ppl=test.perplexity)
    return row


def train_phase(
    ctx: Context,
    key: str,
    *,
    epochs: int,
    lr_at: Callable[[int], float],
    options: OptimizerConfig,
    batch_size: int,
    round_index: int | None = None,
    keep_best: bool = False,
) -> list[dict[str, Any]]:
    """Train ``epochs`` epochs with the masks applied; checkpoint after every epoch.

    Args:
        ctx: the pipeline context (model, masks, data, progress).
        key: the phase name, e.g. ``"finetune"`` or ``"tune:2"``.
        epochs: number of epochs.
        lr_at: the LR of epoch ``e`` (a function from :mod:`sfpk.training.schedules`).
        options: optimizer and loss settings (a config section: ``config.train``).
        batch_size: training batch size.
        round_index: the pruning round, for the metrics rows.
        keep_best: save the best-on-validation weights to ``checkpoints/best_<key>``
            and load them into the model at the end (dense pretraining).

    Returns:
        One ``{"epoch", "val_acc", "test_acc", "val_loss", "test_loss"}`` record per epoch
        (accuracies and mean losses; per token for language models).
    """
    records = ctx.progress.records.setdefault(key, [])
    if key in ctx.progress.done:
        return records
    trainer = ctx.trainer(options, masks=ctx.masks)
    current = ctx.current(key)
    start = 0
    if current is not None:
        trainer.load_state_dict(current["trainer"])
        start = current["epoch"]
    best_name = f"checkpoints/best_{key.replace(':', '_')}.safetensors"  # relative to the run
    sparsity = ctx.masks.sparsity() if ctx.masks is not None else 0.0
    for epoch in range(start, epochs):
        began = time.perf_counter()
        lr = lr_at(epoch)
        loader = ctx.train_loader(key, epoch, batch_size)
        train = trainer.train_epoch(loader, lr=lr, desc=f"{key} {epoch + 1}/{epochs}")
        items_per_second = len(ctx.splits.train) / max(time.perf_counter() - began, 1e-9)
        val, test = ctx.evaluate(trainer)
        record = {
            "epoch": epoch,
            "val_acc": val.top1,
            "test_acc": test.top1,
            "val_loss": val.loss,
            "test_loss": test.loss,
        }
        if keep_best and best_record([*records, record], ctx.task) is record:
            ctx.run.save_weights(ctx.model, best_name)
        records.append(record)
        seconds = time.perf_counter() - began
        phase_seconds = ctx.progress.results.setdefault("phase_seconds", {})
        phase_seconds[key] = phase_seconds.get(key, 0.0) + seconds
        ctx.log_row(
            {
                "phase": key.split(":")[0],
                "round": round_index,
                "epoch": epoch,
                "lr": lr,
                "train_loss": train.loss,
                "train_acc": train.acc,
                **eval_columns(ctx.task, val, test),
                "sparsity": sparsity,
                "seconds": seconds,
            }
        )
        log.info(
            "%s epoch %d/%d lr %.3g: train %.4f, val %.4f, test %.4f (%.1fs, training "
            "%.0f items/s)",
            key, epoch + 1, epochs, lr, train.acc, val.top1, test.top1, seconds,
            items_per_second,
        )  # fmt: skip
        ctx.progress.current = {"key": key, "epoch": epoch + 1, "trainer": trainer.state_dict()}
        ctx.checkpoint()
    if keep_best and records:
        distributed.barrier()  # rank 0 wrote the best weights
        ctx.model.load_state_dict(load_state_dict_file(ctx.run.directory / best_name))
    ctx.complete(key)
    return records


def pretrain_phase(ctx: Context) -> None:
    """Dense training with cosine LR to ``pretrain.lr_min`` (None: 1e-6); keeps the best model.

    The best model is the one of the epoch with the highest validation accuracy. Its
    weights are also written to ``dense.safetensors`` in the run folder
    (reusable with ``--checkpoint``).
    """
    if "pretrain" in ctx.progress.done:
        return
    p = ctx.config.pretrain
    lr_min = PRETRAIN_LR_MIN if p.lr_min is None else p.lr_min
    records = train_phase(
        ctx,
        "pretrain",
        epochs=p.epochs,
        lr_at=lambda e: pretrain_lr(e, lr=p.lr, epochs=p.epochs, lr_min=lr_min),
        options=p,
        batch_size=p.batch_size,
        keep_best=True,
    )
    best = best_record(records, ctx.task)
    results = ctx.progress.results
    results.update(
        pretrain_best_val_epoch=best["epoch"], pretrain_best_val_test_acc=best["test_acc"]
    )
    if ctx.task == "language_model":
        results["pretrain_best_val_test_ppl"] = perplexity(best["test_loss"])
    ctx.run.save_weights(ctx.model, "dense.safetensors")


def dense_phase(ctx: Context) -> None:
    """Evaluate the dense model once (``dense_test_acc``; LM: also ``dense_test_ppl``)."""
    if "dense" in ctx.progress.done:
        return
    val, test = ctx.evaluate()
    ctx.progress.results.update(dense_val_acc=val.top1, dense_test_acc=test.top1)
    if ctx.task == "language_model":
        ctx.progress.results.update(dense_val_ppl=val.perplexity, dense_test_ppl=test.perplexity)
    ctx.log_row({"phase": "dense", **eval_columns(ctx.task, val, test), "sparsity": 0.0})
    log.info("dense model: val %.4f, test %.4f", val.top1, test.top1)
    ctx.complete("dense")


def prune_round(ctx: Context, round_index: int) -> Masks:
    """Prune to round ``k``'s target, apply the masks, recalibrate BatchNorm, evaluate.

    Masks are monotone across rounds (the previous masks are the template, spec §9.5). A
    method that returns a state (SFPK / SpODE: the particles) continues from it in the next
    round, and a call interrupted mid-way resumes from its last step checkpoint.
    """
    key = f"prune:{round_index}"
    cfg = ctx.config.prune
    if key in ctx.progress.done:
        return ctx.masks
    began = time.perf_counter()
    target = round_sparsity(cfg.sparsity, round_index, cfg.rounds)
    # Replicas trained on every rank start the call from rank 0's exact weights and masks
    # (insurance against nondeterministic GPU kernels; no-op in a single process).
    distributed.broadcast_([*ctx.model.state_dict().values(), *(ctx.masks or {}).values()])
    result = api.run_pruner(
        ctx.model,
        ctx.pruning_loader(key),
        method=cfg.method,
        sparsity=target,
        scope=cfg.scope,
        structure=cfg.structure,
        seed=derive_seed(ctx.seed, key),
        masks=ctx.masks,
        loss_fn=ctx.loss_fn,
        exclude=cfg.exclude or None,
        include_bias=cfg.include_bias,
        collapse_guard=cfg.collapse_guard,
        protect_output=cfg.protect_output,
        round_to=cfg.round_to,
        final_sparsity=cfg.sparsity,  # round_to: the reach rule is the final target's
        precision=ctx.config.run.precision,
        start=_start_state(ctx, key),
        observer=_observer(ctx, key),
        **cfg.options,
    )
    masks = result.masks
    ctx.progress.history.extend({"round": round_index, **row} for row in result.history)
    ctx.progress.pruner_state = result.state
    ctx.masks = masks
    masks.apply(ctx.model)
    if cfg.bn_batches > 0:
        recalibrate_bn(ctx.model, ctx.pruning_loader(f"bn:{round_index}"), cfg.bn_batches)
    seconds = time.perf_counter() - began
    val, test = ctx.evaluate()
    results = ctx.progress.results
    results["prune_seconds"] = results.get("prune_seconds", 0.0) + seconds
    results["pruned_val_acc"], results["pruned_test_acc"] = val.top1, test.top1
    if ctx.task == "language_model":
        results["pruned_val_ppl"], results["pruned_test_ppl"] = val.perplexity, test.perplexity
    results.setdefault("round_sparsities", []).append(masks.sparsity())
    results.setdefault("collapse_guard", []).append(masks.collapse_guard)
    # (sfpk.run_pruner already warns when the guard could not apply what was asked)
    if masks.collapse_guard and masks.collapse_guard["rescued"]:
        log.warning(
            "%s: the collapse guard (%s) kept %d weight(s) that the cut would have removed, "
            "in %d layer(s), so no output unit is disconnected",
            key, masks.collapse_guard["mode"], sum(masks.collapse_guard["rescued"].values()),
            len(masks.collapse_guard["rescued"]),
        )  # fmt: skip
    ctx.log_row(
        {
            "phase": "prune",
            "round": round_index,
            **eval_columns(ctx.task, val, test),
            "sparsity": masks.sparsity(),
            "seconds": seconds,
        }
    )
    log.info(
        "%s: sparsity %.4f (target %.4f), val %.4f, test %.4f (%.1fs)",
        key, masks.sparsity(), target, val.top1, test.top1, seconds,
    )  # fmt: skip
    ctx.complete(key)
    return masks


def _start_state(ctx: Context, key: str) -> StartState | None:
    """Resume the interrupted call ``key``, else continue from the last call's state."""
    current = ctx.current(key)
    if current is not None:
        return StartState(current["pruner"], resume=True)
    if ctx.progress.pruner_state is not None:
        return StartState(ctx.progress.pruner_state)
    return None


def _observer(ctx: Context, key: str) -> PruneObserver:
    """Progress bar and step checkpoints of pruning call ``key``."""

    def save(state: dict[str, Any]) -> None:
        ctx.progress.current = {"key": key, "pruner": state}
        ctx.checkpoint()

    return PruneObserver(
        progress=ctx.show_progress and sys.stderr.isatty(),
        checkpoint_every=ctx.config.run.checkpoint_every_steps,
        on_checkpoint=save,
    )
