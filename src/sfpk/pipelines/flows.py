"""The three pipelines (method spec §5, decisions §9) and the summary they report.

* ``pretrain``: dense training, model selection on validation accuracy.
* ``oneshot``: (pretrain unless ``model.checkpoint``) -> K pruning rounds to exponential
  targets, no fine-tuning in between -> fine-tune ``train.epochs`` (warm-up + cosine).
* ``iterative``: (pretrain) -> K rounds of prune + fine-tune ``train.round_epochs[k]``
  (cosine ``round_lr[k] -> round_lr_end[k]``), the last round without -> final fine-tune
  (cosine ``lr -> lr_min``, default ``0.1 * lr``).

Reported accuracy (spec §9.7): the mean test accuracy of the last ``report_last_k``
fine-tuning epochs, and the test accuracy at the best-validation epoch. Model selection
never looks at the test split. Language-model runs (``task="language_model"``) report token
accuracy under the same keys, the matching perplexities (``*_test_ppl``) next to them, and
select on the validation loss.
"""

from __future__ import annotations

import logging
import statistics
from functools import partial
from typing import Any, Literal

import torch

from ..deploy.costs import cost_summary, slim_cost_summary
from ..errors import ConfigError
from ..losses import perplexity
from ..masks.core import Masks
from ..training import distributed
from ..training.schedules import finetune_lr, oneshot_lr, per_round, resolve_lr_min, round_lr
from .context import Context
from .phases import best_record, dense_phase, pretrain_phase, prune_round, train_phase

__all__ = ["run_pretrain", "run_oneshot", "run_iterative", "summarize"]

log = logging.getLogger(__name__)


def _slim_costs(ctx: Context, masks: Masks | None) -> dict[str, int | None]:
    """``slim_params`` / ``slim_macs`` of structured conv-net masks (None otherwise).

    Slimming needs torch-pruning (the ``slim`` extra) and float inputs; where it is not
    available or does not apply the figures are None and the log says why.
    """
    empty: dict[str, int | None] = {"slim_params": None, "slim_macs": None}
    if ctx.task != "classification":  # token-id inputs: nothing to trace with zeros
        return empty
    try:
        return slim_cost_summary(ctx.model, masks, ctx.splits.input_shape)
    except ConfigError as error:  # torch-pruning missing: the run itself is fine
        log.warning("no slim figures in summary.json: %s", error)
        return empty


def run_pretrain(ctx: Context) -> dict[str, Any]:
    """Train the dense model; ``model.safetensors`` holds the best-on-validation epoch."""
    pretrain_phase(ctx)
    return _finish(ctx, final_records=ctx.progress.records["pretrain"])


def _rounds(ctx: Context) -> int:
    """``prune.rounds``, which :func:`sfpk.config.core.build_config` always resolves to an int."""
    rounds = ctx.config.prune.rounds
    if rounds is None:
        raise ConfigError("prune.rounds is unresolved; build configs with sfpk.build_config")
    return rounds


def _start_sparse(ctx: Context) -> None:
    """Pretrain unless the weights come trained: a ``--checkpoint`` or a model that says it
    was loaded pretrained (``sfpk_pretrained``, e.g. an ``hf:`` checkpoint); then evaluate."""
    pretrained = getattr(ctx.model, "sfpk_pretrained", False)
    if ctx.config.model.checkpoint is None and not pretrained:
        pretrain_phase(ctx)
    dense_phase(ctx)


def run_oneshot(ctx: Context) -> dict[str, Any]:
    """Prune in K rounds without fine-tuning in between, then fine-tune once."""
    _start_sparse(ctx)
    for k in range(_rounds(ctx)):
        prune_round(ctx, k)
    return _finish(ctx, final_records=_final_finetune(ctx, "oneshot"))


def run_iterative(ctx: Context) -> dict[str, Any]:
    """K rounds of prune + fine-tune (the last round without), then a final fine-tune."""
    _start_sparse(ctx)
    t = ctx.config.train
    rounds = _rounds(ctx)
    for k in range(rounds):
        prune_round(ctx, k)
        if k == rounds - 1:
            break
        start = per_round(t.round_lr if t.round_lr is not None else [t.lr], k)
        end = per_round(t.round_lr_end, k)
        epochs = int(per_round(t.round_epochs, k))
        train_phase(
            ctx,
            f"tune:{k}",
            epochs=epochs,
            lr_at=lambda e, s=start, f=end, n=epochs: round_lr(e, start=s, end=f, epochs=n),
            options=t,
            batch_size=t.batch_size,
            round_index=k,
        )
    records = _final_finetune(ctx, "iterative", round_index=rounds - 1)
    return _finish(ctx, final_records=records)


def _final_finetune(
    ctx: Context, pipeline: Literal["oneshot", "iterative"], round_index: int | None = None
) -> list[dict[str, Any]]:
    """The last fine-tuning phase: cosine from ``lr`` to the pipeline's floor, then held.

    One-shot runs start with the linear warm-up; iterative runs have none (spec §5.3-5.4).
    """
    t = ctx.config.train
    lr_min = resolve_lr_min(t.lr, t.lr_min, fixed_lr_epochs=t.fixed_lr_epochs, phase=pipeline)
    cosine_to = dict(lr=t.lr, lr_min=lr_min, epochs=t.epochs, fixed_lr_epochs=t.fixed_lr_epochs)
    if pipeline == "oneshot":
        warmup = dict(warmup_epochs=t.warmup_epochs, cold_start_lr=t.cold_start_lr)
        lr_at = partial(oneshot_lr, **cosine_to, **warmup)
    else:
        lr_at = partial(finetune_lr, **cosine_to)
    return train_phase(
        ctx,
        "finetune",
        epochs=t.epochs,
        lr_at=lr_at,
        options=t,
        batch_size=t.batch_size,
        round_index=round_index,
    )


def summarize(ctx: Context, final_records: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of ``summary.json``."""
    cfg, results = ctx.config, ctx.progress.results
    masks = ctx.masks
    k = min(cfg.train.report_last_k, len(final_records))
    best = best_record(final_records, ctx.task) if final_records else None
    if cfg.pipeline == "pretrain":
        final_test_acc = best["test_acc"] if best else None
    else:
        final_test_acc = final_records[-1]["test_acc"] if final_records else None
        final_test_acc = (
            results.get("pruned_test_acc") if final_test_acc is None else final_test_acc
        )
    phase_seconds = results.get("phase_seconds", {})
    summary = {
        "pipeline": cfg.pipeline,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "task": ctx.task,
        "method": masks.method if masks is not None else None,
        "sparsity": cfg.prune.sparsity if masks is not None else None,
        "achieved_sparsity": masks.sparsity() if masks is not None else None,
        "rounds": cfg.prune.rounds if masks is not None else None,
        "round_sparsities": results.get("round_sparsities"),
        "collapse_guard": results.get("collapse_guard"),
        "structure": masks.structure if masks is not None else None,
        "scope": masks.scope if masks is not None else None,
        "round_to": masks.round_to if masks is not None else None,
        "unpruned_output_layers": masks.unpruned_outputs if masks is not None else None,
        "dense_test_acc": results.get("dense_test_acc"),
        "pruned_test_acc": results.get("pruned_test_acc"),
        "final_test_acc": final_test_acc,
        "last_k": k,
        "last_k_mean_test_acc": (
            statistics.fmean(r["test_acc"] for r in final_records[-k:]) if k else None
        ),
        "best_val_epoch": best["epoch"] if best else None,
        "best_val_test_acc": best["test_acc"] if best else None,
        "pretrain_seconds": phase_seconds.get("pretrain", 0.0),
        "prune_seconds": results.get("prune_seconds", 0.0),
        "finetune_seconds": sum(s for key, s in phase_seconds.items() if key != "pretrain"),
        "seconds": ctx.seconds(),
        "seed": cfg.run.seed,
        "per_layer": masks.layer_report() if masks is not None else None,
        **cost_summary(
            ctx.model,
            masks,
            ctx.splits.input_shape,
            torch.long if ctx.task == "language_model" else None,  # token ids in
        ),
        **_slim_costs(ctx, masks),
    }
    if ctx.task == "language_model":
        summary.update(_perplexities(ctx, final_records, best, k))
    return summary


def _perplexities(
    ctx: Context, final_records: list[dict[str, Any]], best: dict[str, Any] | None, k: int
) -> dict[str, Any]:
    """The perplexity fields of a language-model run's summary, next to the accuracies.

    ``final_test_ppl`` follows ``final_test_acc`` (the best-validation epoch for pretrain,
    the last fine-tuning epoch otherwise, the pruned model without fine-tuning);
    ``last_k_mean_test_ppl`` is ``exp`` of the mean test loss of the last k epochs (the
    perplexity of their pooled tokens, each epoch's test split being the same size).
    """
    results = ctx.progress.results
    if ctx.config.pipeline == "pretrain":
        final = perplexity(best["test_loss"]) if best else None
    elif final_records:
        final = perplexity(final_records[-1]["test_loss"])
    else:
        final = results.get("pruned_test_ppl")
    last_k = statistics.fmean(r["test_loss"] for r in final_records[-k:]) if k else None
    return {
        "dense_test_ppl": results.get("dense_test_ppl"),
        "pruned_test_ppl": results.get("pruned_test_ppl"),
        "final_test_ppl": final,
        "last_k_mean_test_ppl": perplexity(last_k) if last_k is not None else None,
        "best_val_test_ppl": perplexity(best["test_loss"]) if best else None,
    }


def _finish(ctx: Context, *, final_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the final model, masks, per-step history, summary and plots.

    Under ``torchrun`` rank 0 writes, and every rank returns rank 0's summary.
    """
    run = ctx.run
    run.save_weights(ctx.model, "model.safetensors")
    if ctx.masks is not None:
        run.save_masks(ctx.masks)
    if ctx.progress.history:
        run.write_rows("sfpk_steps.csv", ctx.progress.history)
    summary = distributed.broadcast_object(summarize(ctx, final_records))
    run.write_summary(summary)
    if ctx.config.run.plots:
        run.make_plots()
    return summary
