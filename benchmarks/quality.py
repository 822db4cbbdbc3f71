"""Which pruner to choose: every method at 90-99 % removed, 3 seeds, two data sets.

The study a user reads before choosing a pruner (issue #11, part 3). Every cell is one real
run directory made by the package's own pipelines (``sfpk.build_config`` +
``sfpk.pipelines.start``, i.e. exactly what ``sfpk oneshot`` / ``sfpk iterative`` do), so each
holds its ``config.yaml``, ``metrics.csv`` and ``summary.json``. A cell whose ``summary.json``
exists is skipped; a cell that was interrupted is resumed from its last checkpoint
(``sfpk.pipelines.resume``). Kill the study at any time and start the same command again.

Grid (``--grid full``, the default):

* **unstructured**: every method of ``sfpk methods`` (rand, mag, snip, grasp, synflow, wanda,
  spode, sfpk) x removed {0.90, 0.95, 0.98, 0.99} x seeds {0, 1, 2}, on mnist1d/cnn1d and
  digits/cnn_digits; each method's own default scope (global; wanda: per row); the collapse
  guard at its default (``row``).
* **filter**: the same methods, filter masks, local scope (every layer loses the same
  fraction of its filters) at {0.5, 0.7, 0.9} removed.
* **iterative**: sfpk, spode and mag at 0.98 removed in 3 rounds (exponential targets
  0.73, 0.93, 0.98) with 2 fine-tuning epochs after each round but the last.

Budgets (the same for every method):

* **Dense model**: one per data set, pretrained once (seed 0, 15 epochs, the demo's recipe)
  in ``RUNS/dense-<data>`` and loaded by every cell, so all methods and seeds prune the very
  same weights; the seed of a cell drives its pruning batches, the pruner's randomness and
  fine-tuning. (mnist1d: 97.7 % test; digits: 99.7 %.)
* **Pruning**: SFPK and SpODE with the paper's defaults (N = 100 steps, n = 10 particles,
  exp kernel, lambda = 0.2, soft vote); SNIP / GraSP read 10 batches; SynFlow 100 rounds. The
  pruning batch is 512 on mnist1d (as the paper and the golden protocol) and 128 on digits
  (its train split has only 1,293 images; with 512 an SFPK cell costs 4x more, ~300
  core-seconds).
* **Fine-tuning**: 10 epochs (1 warm-up, cosine), batch 64, lr 0.01; the reported
  accuracy is the mean test accuracy of the last 3 epochs (``--last-k``), next to the test
  accuracy right after pruning (BatchNorm recalibrated, before any fine-tuning).

Cost: the two worker processes used 1,516 CPU-seconds for the first 145 cells (10.5 s per
cell, SFPK cells included; measured with ``ps`` on a shared machine), so the whole grid
(354 cells, iterative SFPK cells x3) needs about 4,500 CPU-seconds: about 40 minutes on 2
idle cores (``--jobs 2``, 1 thread each), within the 2-hour budget. ``--quick`` (mag,
snip, spode, sfpk at 0.95 and 0.98, mnist1d, seed 0: a few minutes on idle cores, about 10
on a shared machine) and ``--tiny`` (one mag cell with a 1-epoch dense model, for the
tests; seconds) run subsets. The order puts what matters most first: the unstructured cells at
0.95 / 0.98, seed by seed, then 0.90 / 0.99, then iterative, then filter.

Output: a table per (family, data set) of mean +- sd over seeds (and how many seeds
finished), ``RESULTS/cells.csv`` (one row per finished cell), ``RESULTS/table.json``
(aggregates), ``RESULTS/table.md`` (the tables in Markdown) and the accuracy-vs-sparsity
figure ``RESULTS/quality.png``.

Usage:
    nice -n 19 python benchmarks/quality.py [--jobs 2] [--quick | --tiny]
        [--out benchmarks/results/quality] [--report-only] [--families filter [--rerun]]

A cell whose run folder is absent keeps its row of an earlier ``cells.csv``, so one family
can be rerun alone (``--families filter --rerun`` after a fix to filter masks: its run
folders are moved to ``runs/superseded-<time>/`` and its recorded rows are not reported)
without losing the others' results.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
METHODS = ("rand", "mag", "snip", "grasp", "synflow", "wanda", "spode", "sfpk")
DATASETS = {"mnist1d": "cnn1d", "digits": "cnn_digits"}
PRUNE_BATCH = {"mnist1d": 512, "digits": 128}
UNSTRUCTURED = (0.90, 0.95, 0.98, 0.99)
FILTER = (0.5, 0.7, 0.9)
ITERATIVE_METHODS = ("sfpk", "spode", "mag")
ITERATIVE_ROUNDS = 3
ITERATIVE_ROUND_EPOCHS = 2
SEEDS = (0, 1, 2)

CSV_FIELDS = (
    "family", "data", "model", "method", "sparsity", "seed", "dense", "pruned", "last_k",
    "final", "k", "achieved_sparsity", "guard_rescued", "prune_seconds", "seconds", "run",
)  # fmt: skip
_CSV_TYPES = {"sparsity": float, "seed": int, "dense": float, "pruned": float, "last_k": float,
              "final": float, "k": int, "achieved_sparsity": float, "guard_rescued": int,
              "prune_seconds": float, "seconds": float}  # fmt: skip
FAMILIES = ("unstructured", "iterative", "filter")


@dataclass(frozen=True)
class Budget:
    """Training budgets shared by every cell of one study."""

    pretrain_epochs: int = 15
    epochs: int = 10
    warmup_epochs: int = 1
    last_k: int = 3
    pretrain_lr: float = 0.05


@dataclass(frozen=True)
class Cell:
    """One run of the study: a method at a sparsity on a data set with a seed."""

    family: str  # "unstructured", "filter" or "iterative"
    data: str
    method: str
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        """The run folder, relative to the study's ``runs`` folder."""
        return f"{self.data}/{self.family}/{self.method}-{self.sparsity:g}-s{self.seed}"


def grid(kind: str) -> list[Cell]:
    """The cells of ``kind`` ("full", "quick" or "tiny"), most important first."""
    if kind == "tiny":
        return [Cell("unstructured", "digits", "mag", 0.9, 0)]
    if kind == "quick":
        return [
            Cell("unstructured", "mnist1d", method, sparsity, 0)
            for sparsity in (0.95, 0.98)
            for method in ("mag", "snip", "spode", "sfpk")
        ]
    cells: list[Cell] = []
    for sparsities in ((0.95, 0.98), (0.90, 0.99)):
        cells += [
            Cell("unstructured", data, method, sparsity, seed)
            for seed in SEEDS
            for data in DATASETS
            for sparsity in sparsities
            for method in METHODS
        ]
    cells += [
        Cell("iterative", data, method, 0.98, seed)
        for seed in SEEDS
        for data in DATASETS
        for method in ITERATIVE_METHODS
    ]
    cells += [
        Cell("filter", data, method, sparsity, seed)
        for seed in SEEDS
        for data in DATASETS
        for sparsity in FILTER
        for method in METHODS
    ]
    return cells


# -- running cells ------------------------------------------------------------------------


def _base(data: str, budget: Budget, out: Path, seed: int) -> dict[str, Any]:
    return {
        "data.dataset": data,
        "model.name": DATASETS[data],
        "run.out": str(out),
        "run.seed": seed,
        "run.device": "cpu",
        "run.quiet": True,
        "run.plots": False,
        "pretrain.epochs": budget.pretrain_epochs,
        "pretrain.lr": budget.pretrain_lr,
    }


def dense_weights(runs: Path, data: str, budget: Budget) -> Path:
    """``runs/dense-<data>/model.safetensors``, pretraining it (seed 0) when absent."""
    from sfpk import pipelines
    from sfpk.config.core import build_config

    folder = runs / f"dense-{data}"
    weights = folder / "model.safetensors"
    if not weights.is_file():
        config = build_config("pretrain", overrides=_base(data, budget, folder, 0))
        pipelines.start(config, overwrite=True)
    return weights


def cell_overrides(cell: Cell, budget: Budget, out: Path, dense: Path) -> dict[str, Any]:
    """The config keys of one cell (what ``sfpk oneshot|iterative`` flags would set)."""
    overrides = _base(cell.data, budget, out, cell.seed) | {
        "model.checkpoint": str(dense),
        "prune.method": cell.method,
        "prune.sparsity": cell.sparsity,
        "prune.batch_size": PRUNE_BATCH[cell.data],
        "train.epochs": budget.epochs,
        "train.warmup_epochs": budget.warmup_epochs,
        "train.report_last_k": budget.last_k,
    }
    if cell.family == "filter":
        overrides |= {"prune.structure": "filter", "prune.scope": "local"}
    if cell.family == "iterative":
        overrides |= {
            "prune.rounds": ITERATIVE_ROUNDS,
            "train.round_epochs": [ITERATIVE_ROUND_EPOCHS],
            "train.round_lr_end": [1e-3],
        }
    return overrides


def run_cell(cell: Cell, runs: Path, budget: Budget, threads: int) -> tuple[str, str]:
    """Run (or resume, or skip) one cell; return (status, message). Never raises."""
    import torch

    from sfpk import pipelines
    from sfpk.config.core import build_config

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR, force=True)
    out = runs / cell.name
    if (out / "summary.json").is_file():
        return "skipped", cell.name
    started = time.perf_counter()
    try:
        if (out / "config.yaml").is_file():
            pipelines.resume(out, quiet=True)
            status = "resumed"
        else:
            dense = runs / f"dense-{cell.data}" / "model.safetensors"
            pipeline = "iterative" if cell.family == "iterative" else "oneshot"
            config = build_config(pipeline, overrides=cell_overrides(cell, budget, out, dense))
            pipelines.start(config, overwrite=True)
            status = "ran"
    except Exception:  # one broken cell must not stop the study; it is retried next time
        return "failed", f"{cell.name}\n{traceback.format_exc()}"
    return status, f"{cell.name} ({time.perf_counter() - started:.0f} s)"


def run_cells(cells: list[Cell], runs: Path, budget: Budget, jobs: int) -> dict[str, int]:
    """Run every cell, ``jobs`` at a time in worker processes; count the statuses."""
    counts: dict[str, int] = {}
    todo = [c for c in cells if not (runs / c.name / "summary.json").is_file()]
    counts["skipped"] = len(cells) - len(todo)
    print(f"{len(cells)} cells: {counts['skipped']} finished before, {len(todo)} to run",
          flush=True)  # fmt: skip
    if not todo:
        return counts

    def record(status: str, message: str) -> None:
        counts[status] = counts.get(status, 0) + 1
        done = sum(counts.values()) - counts["skipped"]
        print(f"[{done}/{len(todo)}] {status}: {message}", flush=True)

    if jobs <= 1:
        for cell in todo:
            record(*run_cell(cell, runs, budget, 1))
        return counts
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_cell, cell, runs, budget, 1) for cell in todo]
        for future in as_completed(futures):
            record(*future.result())
    return counts


# -- collecting and reporting -------------------------------------------------------------


def read_row(cell: Cell, runs: Path) -> dict[str, Any] | None:
    """The CSV row of a finished cell (accuracies in %), or None if it has not finished."""
    path = runs / cell.name / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    reports = [r for r in (s.get("collapse_guard") or []) if r]
    rescued = sum(sum(r.get("rescued", {}).values()) for r in reports)

    def pct(key: str) -> float | None:
        return None if s.get(key) is None else round(100 * s[key], 4)

    return {
        "family": cell.family, "data": cell.data, "model": s["model"], "method": cell.method,
        "sparsity": cell.sparsity, "seed": cell.seed, "dense": pct("dense_test_acc"),
        "pruned": pct("pruned_test_acc"), "last_k": pct("last_k_mean_test_acc"),
        "final": pct("final_test_acc"), "k": s["last_k"],
        "achieved_sparsity": s["achieved_sparsity"], "guard_rescued": rescued,
        "prune_seconds": round(s["prune_seconds"], 2), "seconds": round(s["seconds"], 2),
        "run": cell.name,
    }  # fmt: skip


def _mean_sd(values: list[float]) -> tuple[float, float]:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), sd


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds per (family, data, method, sparsity)."""
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["family"], row["data"], row["method"], row["sparsity"])
        groups.setdefault(key, []).append(row)
    table = []
    for (family, data, method, sparsity), group in groups.items():
        pruned = _mean_sd([r["pruned"] for r in group])
        last_k = _mean_sd([r["last_k"] for r in group])
        table.append({
            "family": family, "data": data, "method": method, "sparsity": sparsity,
            "seeds": sorted(r["seed"] for r in group),
            "pruned_mean": pruned[0], "pruned_sd": pruned[1],
            "last_k_mean": last_k[0], "last_k_sd": last_k[1],
            "pruned_all": [r["pruned"] for r in group], "last_k_all": [r["last_k"] for r in group],
        })  # fmt: skip
    return table


def _fmt(mean: float, sd: float) -> str:
    return f"{mean:5.1f}" if math.isnan(sd) else f"{mean:5.1f}±{sd:<4.1f}"


def format_tables(table: list[dict[str, Any]], cells: list[Cell]) -> str:
    """One text table per (family, data): methods x sparsities, "pruned -> last-k (n)"."""
    lines = []
    wanted = {(c.family, c.data) for c in cells}
    index = {(r["family"], r["data"], r["method"], r["sparsity"]): r for r in table}
    for family, data in sorted(wanted, key=lambda fd: (fd[0] != "unstructured", fd)):
        sparsities = sorted({c.sparsity for c in cells if (c.family, c.data) == (family, data)})
        methods = [m for m in METHODS if any(
            (c.family, c.data, c.method) == (family, data, m) for c in cells)]  # fmt: skip
        lines.append(
            f"\n{family}, {data}/{DATASETS[data]}: test % before fine-tuning -> mean of the "
            "last k fine-tuning epochs, mean±sd over seeds (n seeds)"
        )
        lines.append(f"{'method':<8} " + " ".join(f"{s:>27g}" for s in sparsities))
        for method in methods:
            cols = []
            for s in sparsities:
                r = index.get((family, data, method, s))
                if r is None:
                    cols.append(f"{'-':>27}")
                    continue
                text = (
                    f"{_fmt(r['pruned_mean'], r['pruned_sd'])} -> "
                    f"{_fmt(r['last_k_mean'], r['last_k_sd'])} ({len(r['seeds'])})"
                )
                cols.append(text.rjust(27))
            lines.append(f"{method:<8} " + " ".join(cols))
    return "\n".join(lines)


def markdown_tables(table: list[dict[str, Any]], cells: list[Cell]) -> str:
    """The tables of :func:`format_tables` in Markdown (``RESULTS/table.md``)."""
    index = {(r["family"], r["data"], r["method"], r["sparsity"]): r for r in table}
    out = []
    families, datas = ["unstructured", "iterative", "filter"], list(DATASETS)
    wanted = sorted(
        {(c.family, c.data) for c in cells},
        key=lambda fd: (families.index(fd[0]), datas.index(fd[1])),
    )
    for family, data in wanted:
        own = [c for c in cells if (c.family, c.data) == (family, data)]
        sparsities = sorted({c.sparsity for c in own})
        methods = [m for m in METHODS if any(c.method == m for c in own)]
        out.append(f"\n**{family}, {data}/{DATASETS[data]}**\n")
        out.append("| method | " + " | ".join(f"{100 * s:g} % removed" for s in sparsities) + " |")
        out.append("|---|" + "---|" * len(sparsities))
        for method in methods:
            row = []
            for s in sparsities:
                r = index.get((family, data, method, s))
                if r is None:
                    row.append("not run yet")
                    continue
                before = _fmt(r["pruned_mean"], r["pruned_sd"]).strip().replace("±", " ± ")
                after = _fmt(r["last_k_mean"], r["last_k_sd"]).strip().replace("±", " ± ")
                n = len(r["seeds"])
                note = "" if n == len(SEEDS) else f" ({n} seed{'s' if n > 1 else ''})"
                row.append(f"{before} → {after}{note}")
            out.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def plot(table: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy vs sparsity, one row per data set: before and after fine-tuning, filter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = [d for d in DATASETS if any(r["data"] == d for r in table)]
    if not datas:
        return None
    panels = [("unstructured", "pruned"), ("unstructured", "last_k"), ("filter", "last_k")]
    titles = {("unstructured", "pruned"): "unstructured, before fine-tuning",
              ("unstructured", "last_k"): "unstructured, after fine-tuning",
              ("filter", "last_k"): "filter (local), after fine-tuning"}  # fmt: skip
    fig, axes = plt.subplots(len(datas), 3, figsize=(15, 4.2 * len(datas)), squeeze=False)
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    colors["sfpk"] = "black"
    for i, data in enumerate(datas):
        for j, (family, key) in enumerate(panels):
            ax = axes[i][j]
            # Evenly spaced sparsity levels (90 -> 99 % would crowd the extreme end).
            levels = UNSTRUCTURED if family == "unstructured" else FILTER
            position = {s: n for n, s in enumerate(levels)}
            for method in METHODS:
                rs = sorted((r for r in table if (r["family"], r["data"], r["method"])
                             == (family, data, method)), key=lambda r: r["sparsity"])  # fmt: skip
                if not rs:
                    continue
                xs = [position[r["sparsity"]] for r in rs]
                ys = [r[f"{key}_mean"] for r in rs]
                es = [0 if math.isnan(r[f"{key}_sd"]) else r[f"{key}_sd"] for r in rs]
                style = "-" if method in ("sfpk", "spode") else "--"
                width = 2.6 if method == "sfpk" else 1.3
                ax.errorbar(xs, ys, yerr=es, label=method, color=colors[method], ls=style,
                            lw=width, marker="o", ms=3, capsize=2)  # fmt: skip
            for r in table:  # iterative cells: one star each, beside the one-shot point
                if (family, key) == ("unstructured", "last_k") and r["family"] == "iterative" \
                        and r["data"] == data:  # fmt: skip
                    ax.errorbar([position[r["sparsity"]] + 0.08], [r["last_k_mean"]],
                                yerr=[0 if math.isnan(r["last_k_sd"]) else r["last_k_sd"]],
                                color=colors[r["method"]], marker="*", ms=10, capsize=2,
                                ls="none", label=f"{r['method']} iterative")  # fmt: skip
            ax.set_xticks(range(len(levels)), [f"{100 * s:g}" for s in levels])
            ax.set_title(f"{data}: {titles[(family, key)]}", fontsize=10)
            ax.set_xlabel("weights removed (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7, loc="lower left")
            else:
                ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
    fig.suptitle("sfpk benchmarks/quality.py: mean ± sd over seeds", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def supersede(runs: Path, families: Iterable[str]) -> Path | None:
    """Move the run folders of ``families`` to ``runs/superseded-<UTC time>/`` (nothing is
    deleted), so that their cells run again; return that folder, or None if none existed."""
    folders = [runs / data / family for data in DATASETS for family in families]
    folders = [f for f in folders if f.is_dir()]
    if not folders:
        return None
    target = runs / time.strftime("superseded-%Y%m%dT%H%M%SZ", time.gmtime())
    for folder in folders:
        destination = target / folder.relative_to(runs)
        destination.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(destination)
    print(f"moved {len(folders)} run folder(s) of {', '.join(families)} to {target}")
    return target


def recorded_rows(results: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier ``RESULTS/cells.csv`` by run name (typed), or none.

    A cell whose run folder is gone (a study rerun elsewhere, or a family rerun with
    ``--families``) keeps its recorded result instead of vanishing from the report.
    """
    path = results / "cells.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["run"]: {k: _CSV_TYPES.get(k, str)(v) if v != "" else None for k, v in row.items()}
        for row in rows
    }


def report(
    cells: list[Cell], runs: Path, results: Path, *, rerun: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Collect finished cells, print the tables, write cells.csv, table.json and the figure.

    A cell without a run folder takes its row from the earlier ``cells.csv``, unless its
    family is in ``rerun`` (those results are superseded, e.g. after a fix).
    """
    recorded = recorded_rows(results)
    rerun = set(rerun)
    rows = []
    for cell in cells:
        row = read_row(cell, runs)
        if row is None and cell.family not in rerun:
            row = recorded.get(cell.name)
        if row is not None:
            rows.append(row)
    table = aggregate(rows)
    print(format_tables(table, cells))
    finished = {row["run"] for row in rows}
    missing = [c.name for c in cells if c.name not in finished]
    print(f"\n{len(rows)} of {len(cells)} cells finished" +
          (f"; missing: {len(missing)}" if missing else ""))  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    with (results / "cells.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (results / "table.json").write_text(json.dumps(
        {"cells": len(cells), "finished": len(rows), "missing": missing, "table": table},
        indent=1))  # fmt: skip
    (results / "table.md").write_text(markdown_tables(table, cells))
    figure = plot(table, results / "quality.png")
    print(f"wrote {results / 'cells.csv'}, {results / 'table.json'}"
          + (f", {figure}" if figure else ""))  # fmt: skip
    return rows


def main(argv: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Run the study (skipping finished cells), then report; return the finished rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="8-cell subset (mnist1d, seed 0)")
    mode.add_argument("--tiny", action="store_true", help="one mag cell, 1-epoch budgets")
    parser.add_argument("--out", default=None, help="results folder (runs/ inside it)")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once")
    parser.add_argument("--report-only", action="store_true", help="only collect and report")
    parser.add_argument(
        "--families", default=None,
        help="comma-separated families to run (default: all; the others keep their rows of "
        "cells.csv)",
    )  # fmt: skip
    parser.add_argument(
        "--rerun", action="store_true",
        help="run the --families cells again (results made before a fix): their run folders "
        "are moved to runs/superseded-<time>/ and their recorded rows are not reported",
    )  # fmt: skip
    args = parser.parse_args(None if argv is None else list(argv))
    families = [f for f in (args.families or ",".join(FAMILIES)).split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    if args.rerun and (args.report_only or args.families is None):
        parser.error("--rerun needs --families (which to run again) and cannot be --report-only")
    kind = "tiny" if args.tiny else "quick" if args.quick else "full"
    budget = Budget(pretrain_epochs=1, epochs=1, warmup_epochs=0, last_k=1) if args.tiny \
        else Budget()  # fmt: skip
    results = Path(args.out) if args.out else RESULTS if kind == "full" else RESULTS / kind
    runs = results / "runs"
    cells = grid(kind)
    if args.rerun:
        supersede(runs, families)
    if not args.report_only:
        chosen = [c for c in cells if c.family in families]
        for data in sorted({c.data for c in chosen}):
            dense_weights(runs, data, budget)
        run_cells(chosen, runs, budget, args.jobs)
    return report(cells, runs, results, rerun=families if args.rerun else ())


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
