"""Compare finished runs: a Markdown table and an accuracy-vs-sparsity figure.

``sfpk report RUN [RUN ...] -o OUT`` groups runs by (method, sparsity) and the settings in
which they differ (data, model, pipeline, structure, scope, ``round_to``), averages their
accuracy over seeds and writes ``OUT/report.md``, ``OUT/report.csv`` and
``OUT/accuracy_vs_sparsity.png``. Language-model runs also get their test perplexity
(mean ± std over seeds) in a perplexity column; their accuracy is the token accuracy.
Runs whose summaries carry cost figures (:func:`sfpk.cost_summary`) get a parameters and a
MACs column, "nonzero / all" (and a slim column when the summaries have ``slim_params``).

Summaries written before ``structure``, ``scope`` or ``round_to`` were recorded get them
from the run folder's ``config.yaml`` (its ``prune`` section), else the config defaults; a
scope left to the method (None) is the method's default, and ``round_to`` 1 is None (no
rounding). Dense (pretrain) rows carry none of these settings.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, SfpkError
from ..pruners.base import pruner_class
from .plots import plot_accuracy_vs_sparsity

log = logging.getLogger(__name__)

__all__ = ["load_summaries", "summarize_runs", "write_report", "ACCURACY_KEYS", "PERPLEXITY_KEYS"]

# Preferred accuracy figure first: the paper's protocol (mean of the last k fine-tune epochs).
ACCURACY_KEYS = ("last_k_mean_test_acc", "final_test_acc", "best_val_test_acc")
# The same preference for the perplexity of language-model runs.
PERPLEXITY_KEYS = ("last_k_mean_test_ppl", "final_test_ppl", "best_val_test_ppl")
# Pruning settings that tell runs of one method apart (pipeline, then the masks' shape):
# when the runs differ in one, it joins the row label, so they are never averaged as seeds.
PRUNING_KEYS = ("pipeline", "structure", "scope", "round_to")
# The masks' settings a summary may lack (older runs) and the prune section's defaults.
MASK_KEYS = ("structure", "scope", "round_to")
_MASK_DEFAULTS: dict[str, Any] = {"structure": "unstructured", "scope": None, "round_to": None}
# Cost figures of summary.json (sfpk.deploy.costs), averaged over a row's runs when all have them.
COST_KEYS = ("params", "nonzero_params", "macs", "nonzero_macs", "slim_params", "slim_macs")


def _cost_fields(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """The mean of each cost figure over ``runs``; None where a run lacks it."""
    return {
        key: statistics.fmean(float(r[key]) for r in runs)
        if all(r.get(key) is not None for r in runs)
        else None
        for key in COST_KEYS
    }


def _compact(count: float | None) -> str:
    """272474 -> '272.5k', 40.6e6 -> '40.6M'; '-' for None."""
    if count is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= size:
            return f"{count / size:.1f}{suffix}"
    return f"{count:.0f}"


def load_summaries(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read ``summary.json`` of each run directory, each distinct folder once (by its
    resolved path: ``runs/a``, ``./runs/a/`` and a symlink to it are one run).

    Raises:
        CheckpointError: a directory without a readable summary.json.
    """
    summaries = []
    seen: set[Path] = set()
    for run_dir in run_dirs:
        resolved = Path(run_dir).resolve()
        if resolved in seen:  # the same run given twice (or by two paths) counts once
            log.warning("run %s is given more than once; counted once", run_dir)
            continue
        seen.add(resolved)
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            raise CheckpointError(f"{str(run_dir)!r} has no summary.json (is the run finished?)")
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from exc
        summary["_run_dir"] = str(run_dir)
        if summary.get("method") and any(key not in summary for key in MASK_KEYS):
            prune = _config_prune(Path(run_dir) / "config.yaml")
            for key in MASK_KEYS:
                if key not in summary and key in prune:
                    summary[key] = prune[key]
        summaries.append(summary)
    return summaries


def _config_prune(path: Path) -> dict[str, Any]:
    """The ``prune`` section of a run's ``config.yaml`` ({} when absent or unreadable)."""
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read %s (%s); its run's settings take the defaults", path, exc)
        return {}
    prune = config.get("prune") if isinstance(config, dict) else None
    return prune if isinstance(prune, dict) else {}


def _mask_settings(summary: dict[str, Any]) -> dict[str, Any]:
    """A pruned run's structure, scope and ``round_to``: missing ones take the defaults,
    scope None the method's default, ``round_to`` 1 is None (no rounding)."""
    settings = {key: summary.get(key, _MASK_DEFAULTS[key]) for key in MASK_KEYS}
    if settings["scope"] is None:
        settings["scope"] = "global"
        if settings["structure"] in (None, "unstructured"):
            try:
                settings["scope"] = pruner_class(str(summary.get("method"))).default_scope
            except SfpkError:  # a method this version does not know
                pass
    if settings["round_to"] == 1:
        settings["round_to"] = None
    return settings


def _normalized(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with its masks' settings resolved (pruned runs) or None (dense runs)."""
    if summary.get("method"):
        return {**summary, **_mask_settings(summary)}
    return {**summary, **dict.fromkeys(MASK_KEYS)}


def _first(summary: dict[str, Any], keys: tuple[str, ...], what: str) -> float:
    for key in keys:
        if summary.get(key) is not None:
            return float(summary[key])
    raise CheckpointError(f"summary of {summary['_run_dir']!r} has none of the {what} {keys}")


def _accuracy(summary: dict[str, Any]) -> float:
    return _first(summary, ACCURACY_KEYS, "accuracy fields")


def _is_language_model(summary: dict[str, Any]) -> bool:
    return summary.get("task") == "language_model"


def _setting(summary: dict[str, Any], key: str) -> str:
    """How a run's ``key`` shows in a row label; ``round_to`` None and 1 are no rounding."""
    value = summary.get(key)
    if key == "round_to":
        return f"round_to={value if value is not None else 1}"
    return str(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_runs(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, sparsity): seeds, number of runs, mean and std accuracy.

    When the runs span several data sets, models, pruning pipelines, mask structures,
    scopes or ``round_to`` values, those that differ are part of the method label (e.g.
    ``mag (filter round_to=16)``), so only seeds of the same experiment are averaged. Rows of
    language-model runs also hold ``ppl_mean`` and ``ppl_std`` (test perplexity); other
    rows hold None there.
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    summaries = [_normalized(s) for s in summaries]
    data_keys = [k for k in ("dataset", "model") if len({str(s.get(k)) for s in summaries}) > 1]
    pruned = [s for s in summaries if s.get("method")]
    # oneshot and iterative runs of one method differ, and so do the masks' settings
    pruning_keys = [k for k in PRUNING_KEYS if len({_setting(s, k) for s in pruned}) > 1]
    for summary in summaries:
        # dense (pretrain) runs have method and sparsity None: one "dense" row at 0, labelled
        # by data and model only (no pruning settings)
        method = str(summary.get("method") or "dense")
        keys = data_keys + (pruning_keys if summary.get("method") else [])
        if keys:  # never average runs of different data / model / pipeline as seeds
            method += f" ({' '.join(_setting(summary, k) for k in keys)})"
        sparsity = summary.get("sparsity") or 0.0
        groups[(method, round(float(sparsity), 6))].append(summary)
    rows = []
    for (method, sparsity), runs in sorted(groups.items()):
        mean, std = _mean_std([_accuracy(r) for r in runs])
        ppl_mean = ppl_std = None
        if all(_is_language_model(r) for r in runs):
            ppls = [_first(r, PERPLEXITY_KEYS, "perplexity fields") for r in runs]
            ppl_mean, ppl_std = _mean_std(ppls)
        rows.append(
            {
                "method": method,
                "sparsity": sparsity,
                "runs": len(runs),
                "seeds": sorted({r.get("seed") for r in runs if r.get("seed") is not None}),
                "mean": mean,
                "std": std,
                "achieved_sparsity": statistics.fmean(
                    float(r.get("achieved_sparsity") or sparsity) for r in runs
                ),
                "ppl_mean": ppl_mean,
                "ppl_std": ppl_std,
                # equal over the row's runs (a difference would be in the label)
                **{key: runs[0].get(key) for key in MASK_KEYS},
                **_cost_fields(runs),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table; a perplexity column when any row is a language model's."""
    with_ppl = any(r["ppl_mean"] is not None for r in rows)
    with_costs = any(r.get("params") is not None for r in rows)
    with_slim = any(r.get("slim_params") is not None for r in rows)
    header = "| method | sparsity | achieved | seeds | accuracy (mean ± std) |"
    if with_ppl:
        header += " perplexity (mean ± std) |"
    if with_costs:
        header += " params (nonzero / all) | MACs (nonzero / all) |"
    if with_slim:
        header += " slim params / MACs |"
    lines = [header, "|---" * header.count(" |") + "|"]
    for r in rows:
        seeds = ", ".join(str(s) for s in r["seeds"]) or "-"
        line = (
            f"| {r['method']} | {r['sparsity']:.4f} | {r['achieved_sparsity']:.4f} | {seeds} "
            f"| {100 * r['mean']:.2f} ± {100 * r['std']:.2f} % |"
        )
        if with_ppl:
            ppl = r["ppl_mean"]
            line += " - |" if ppl is None else f" {ppl:.3f} ± {r['ppl_std']:.3f} |"
        if with_costs:
            line += f" {_compact(r.get('nonzero_params'))} / {_compact(r.get('params'))} |"
            line += f" {_compact(r.get('nonzero_macs'))} / {_compact(r.get('macs'))} |"
        if with_slim:
            line += f" {_compact(r.get('slim_params'))} / {_compact(r.get('slim_macs'))} |"
        lines.append(line)
    return lines


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write report.md, report.csv and accuracy_vs_sparsity.png into ``out``; return the .md."""
    rows = summarize_runs(load_summaries(run_dirs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = _table(rows)
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    with (out / "report.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "seeds": " ".join(str(s) for s in r["seeds"])})
    plot_accuracy_vs_sparsity(rows, out / "accuracy_vs_sparsity.png")
    return md
