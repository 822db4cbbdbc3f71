"""Transformers: perplexity (gpt_tiny on tinytext) and accuracy (vit_tiny on digits) against
sparsity, for mag, wanda, snip, spode and sfpk, before and after a short fine-tune.

Everything goes through the package: ``sfpk.load_dataset``/``make_loader`` for data,
``sfpk.models.create`` for the zoo models, ``sfpk.prune`` for the masks (unstructured, each
method's default scope: wanda compares within output rows, the others globally; collapse
guard at its default, ``row``) and ``sfpk.Trainer`` for pretraining, fine-tuning and
evaluation. The protocol, per task and seed:

1. pretrain one dense model from the seed's initialisation (Adam, cosine LR), cached in
   ``<out>/dense/`` and reused by every method and sparsity of that seed;
2. for each sparsity and method: prune a copy of it with ``seed``, evaluate on the test split
   ("pruned"), fine-tune it with its masks applied (Adam, cosine LR), evaluate again ("tuned");
3. the same fine-tune on the dense model gives the reference for the "tuned" column, since on
   these small budgets extra training alone improves a model.

Prints mean ± sd over seeds and writes ``rows.csv`` (one row per run) and ``summary.json``
(aggregates and the exact settings) under ``benchmarks/results/transformers/``.

    nice -n 19 python benchmarks/transformer_quality.py            # the full run (see BUDGETS)
    python benchmarks/transformer_quality.py --quick --out /tmp/q  # seconds: the test's tiny mode
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

import sfpk
from sfpk.data import load_dataset, make_loader
from sfpk.data.base import DataSplits
from sfpk.losses import task_loss
from sfpk.training.optimizers import OptimizerConfig
from sfpk.training.schedules import cosine

RESULTS = Path(__file__).resolve().parent / "results" / "transformers"
METHODS = ("mag", "wanda", "snip", "spode", "sfpk")
SPARSITIES = (0.5, 0.7, 0.9)


@dataclass(frozen=True)
class TaskBudget:
    """One task: data, model and every budget of its pretraining, pruning and fine-tuning."""

    name: str
    data: str
    model: str
    data_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    pretrain_epochs: int = 10
    pretrain_lr: float = 3e-3
    finetune_epochs: int = 1
    finetune_lr: float = 1e-3
    finetune_fraction: float = 1.0
    batch_size: int = 32
    prune_batch_size: int = 32
    prune_samples: int = 512
    sfpk_steps: int = 40
    sfpk_particles: int = 4


BUDGETS = {
    # tinytext (generated, 200k characters, bytes as tokens), blocks of 64 tokens.
    "gpt": TaskBudget(
        name="gpt",
        data="tinytext",
        model="gpt_tiny",
        data_options={"block_size": 64, "num_chars": 200_000},
        pretrain_epochs=8,
        pretrain_lr=3e-3,
        finetune_epochs=1,
        finetune_lr=1e-3,
        finetune_fraction=0.25,
        batch_size=32,
        prune_batch_size=32,
        prune_samples=512,
    ),  # fmt: skip
    # sklearn digits (8x8, 4x4 patches), 1,294 training images.
    "vit": TaskBudget(
        name="vit",
        data="digits",
        model="vit_tiny",
        pretrain_epochs=40,
        pretrain_lr=3e-3,
        finetune_epochs=5,
        finetune_lr=1e-3,
        batch_size=64,
        prune_batch_size=128,
        prune_samples=1024,
    ),  # fmt: skip
}

QUICK = {
    "gpt": replace(
        BUDGETS["gpt"],
        data_options={"block_size": 16, "num_chars": 6000},
        model_options={"dim": 16, "num_heads": 2},
        pretrain_epochs=1,
        prune_batch_size=16,
        prune_samples=32,
        sfpk_steps=2,
        sfpk_particles=2,
    ),  # fmt: skip
    "vit": replace(
        BUDGETS["vit"],
        model_options={"dim": 16, "num_heads": 2},
        pretrain_epochs=1,
        finetune_epochs=1,
        prune_batch_size=64,
        prune_samples=128,
        sfpk_steps=2,
        sfpk_particles=2,
    ),  # fmt: skip
}


def method_options(method: str, budget: TaskBudget) -> dict[str, Any]:
    """The options of ``method`` in this benchmark: SFPK's and SpODE's reduced step budget."""
    if method == "sfpk":
        return {"num_steps": budget.sfpk_steps, "num_particles": budget.sfpk_particles}
    if method == "spode":
        return {"num_steps": budget.sfpk_steps}
    return {}


def metric_of(splits: DataSplits, result: Any) -> float:
    """Perplexity for a language model, top-1 accuracy in % for a classifier."""
    return result.perplexity if splits.task == "language_model" else 100.0 * result.top1


class Bench:
    """Data, loaders and the train / evaluate / prune steps of one task (one device: CPU)."""

    def __init__(self, budget: TaskBudget, out: Path) -> None:
        self.budget = budget
        self.out = out
        self.splits = load_dataset(budget.data, **budget.data_options)
        self.device = torch.device("cpu")
        self.test = make_loader(self.splits.test, batch_size=256, shuffle=False)

    def fresh_model(self, seed: int) -> nn.Module:
        """The zoo model, initialised from ``seed``."""
        torch.manual_seed(seed)
        return sfpk.models.create(
            self.budget.model,
            num_classes=self.splits.num_classes,
            input_shape=self.splits.input_shape,
            **self.budget.model_options,
        )

    def train(
        self,
        model: nn.Module,
        *,
        epochs: int,
        lr: float,
        seed: int,
        masks: sfpk.Masks | None = None,
        lr_min: float = 1e-6,
        fraction: float = 1.0,
    ) -> sfpk.Trainer:
        """``epochs`` of Adam with a cosine LR from ``lr`` to ``lr_min``, masks kept applied;
        each epoch reads a seeded random ``fraction`` of the training split."""
        options = OptimizerConfig(
            epochs=epochs, batch_size=self.budget.batch_size, optimizer="adam", lr=lr
        )
        trainer = sfpk.Trainer(
            model, options, device=self.device, masks=masks, progress=False,
            task=self.splits.task,
        )  # fmt: skip
        for epoch in range(epochs):
            data = self.splits.train
            if fraction < 1.0:
                generator = torch.Generator().manual_seed(1000 * seed + epoch)
                order = torch.randperm(len(data), generator=generator)
                data = Subset(data, order[: max(1, round(fraction * len(data)))].tolist())
            loader = make_loader(
                data, batch_size=self.budget.batch_size, shuffle=True, seed=1000 * seed + epoch
            )
            trainer.train_epoch(loader, lr=cosine(epoch, start=lr, end=lr_min, epochs=epochs))
        return trainer

    def evaluate(self, model: nn.Module) -> float:
        """The task's metric on the test split."""
        trainer = sfpk.Trainer(
            model, OptimizerConfig(), device=self.device, progress=False, task=self.splits.task
        )
        return metric_of(self.splits, trainer.evaluate(self.test))

    def dense(self, seed: int) -> nn.Module:
        """The pretrained dense model of ``seed``, trained once and then read from its file."""
        path = self.out / "dense" / f"{self.budget.name}-s{seed}.pt"
        model = self.fresh_model(seed)
        if path.is_file():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model
        b = self.budget
        self.train(model, epochs=b.pretrain_epochs, lr=b.pretrain_lr, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        return model

    def prune_data(self, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``prune_samples`` training items of a seeded order, in ``prune_batch_size`` batches."""
        b = self.budget
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.splits.train), generator=generator)
        items = [self.splits.train[int(i)] for i in order[: b.prune_samples]]
        return [
            (torch.stack([x for x, _ in chunk]), torch.stack([y for _, y in chunk]))
            for chunk in (items[i : i + b.prune_batch_size]
                          for i in range(0, len(items), b.prune_batch_size))
        ]  # fmt: skip


def _progress(line: str) -> None:
    print(line, flush=True)  # one line per run, visible at once when redirected to a file


def run_task(
    budget: TaskBudget,
    *,
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: Sequence[int],
    out: Path,
    record: Callable[[dict[str, Any]], None],
    done: frozenset[tuple[str, str, float, int]] = frozenset(),
    log: Callable[[str], None] = _progress,
) -> None:
    """Every (seed, sparsity, method) run of one task, plus the dense references; each row
    goes to ``record`` as soon as it is measured. Runs whose key (:func:`row_key`) is in
    ``done`` are skipped (``--resume``)."""
    bench = Bench(budget, out)
    loss_fn = task_loss(bench.splits.task)
    metric = "ppl" if bench.splits.task == "language_model" else "acc"
    for seed in seeds:
        rows: list[dict[str, Any]] = []
        if (budget.name, "dense", 0.0, seed) in done:
            bench.dense(seed)  # (cached) for the runs below
        else:
            tic = time.perf_counter()
            dense = bench.dense(seed)
            dense_metric = bench.evaluate(dense)
            tuned = bench.dense(seed)
            bench.train(
                tuned, epochs=budget.finetune_epochs, lr=budget.finetune_lr, seed=seed,
                fraction=budget.finetune_fraction,
            )  # fmt: skip
            rows.append(_row(
                budget, metric, "dense", seed, target_sparsity=0.0, achieved_sparsity=0.0,
                pruned=dense_metric, tuned=bench.evaluate(tuned), prune_seconds=0.0,
                seconds=time.perf_counter() - tic,
            ))  # fmt: skip
            record(rows[-1])
            log(f"{budget.name} s{seed} dense {metric} {dense_metric:.3f} "
                f"(+fine-tune {rows[-1]['tuned']:.3f})")  # fmt: skip
        data = bench.prune_data(seed)
        for sparsity in sparsities:
            for method in methods:
                if (budget.name, method, sparsity, seed) in done:
                    continue
                tic = time.perf_counter()
                model = bench.dense(seed)
                masks = sfpk.prune(
                    model, data, method=method, sparsity=sparsity, seed=seed, loss_fn=loss_fn,
                    **method_options(method, budget),
                )  # fmt: skip
                prune_seconds = time.perf_counter() - tic
                masks.apply(model)
                pruned = bench.evaluate(model)
                bench.train(
                    model, epochs=budget.finetune_epochs, lr=budget.finetune_lr, seed=seed,
                    masks=masks, fraction=budget.finetune_fraction,
                )  # fmt: skip
                row = _row(
                    budget, metric, method, seed, target_sparsity=sparsity,
                    achieved_sparsity=masks.sparsity(), pruned=pruned,
                    tuned=bench.evaluate(model), prune_seconds=prune_seconds,
                    seconds=time.perf_counter() - tic,
                )  # fmt: skip
                record(row)
                log(f"{budget.name} s{seed} {method:5s} {sparsity:.2f}: {metric} "
                    f"{row['pruned']:.3f} -> {row['tuned']:.3f} "
                    f"(prune {prune_seconds:.1f} s, run {row['seconds']:.1f} s)")  # fmt: skip


def row_key(row: dict[str, Any]) -> tuple[str, str, float, int]:
    """(task, method, target sparsity, seed): what identifies a run."""
    return (row["task"], row["method"], float(row["target_sparsity"]), int(row["seed"]))


FIELDS = ("task", "model", "data", "metric", "method", "seed", "target_sparsity",
          "achieved_sparsity", "pruned", "tuned", "prune_seconds", "seconds")  # fmt: skip


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``rows.csv``, numbers parsed (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in FIELDS[6:]:
            row[key] = float(row[key])
    return rows


class RowFile:
    """``rows.csv``, one line appended and flushed per finished run (kept on ``--resume``)."""

    def __init__(self, path: Path, *, keep: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = read_rows(path) if keep else []
        self.path = path
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def __call__(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=FIELDS).writerow(row)


def _row(
    budget: TaskBudget, metric: str, method: str, seed: int, **values: float
) -> dict[str, Any]:
    """One CSV row: the run's identity, then ``target_sparsity``, ``achieved_sparsity``,
    ``pruned``, ``tuned`` (the metric before / after fine-tuning), ``prune_seconds`` and
    ``seconds`` (prune + evaluate + fine-tune + evaluate)."""
    return {
        "task": budget.name, "model": budget.model, "data": budget.data, "metric": metric,
        "method": method, "seed": seed, **values,
    }  # fmt: skip


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds of each (task, method, target sparsity)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["target_sparsity"]), []).append(r)
    out = []
    for (task, method, sparsity), members in groups.items():
        entry = {"task": task, "method": method, "target_sparsity": sparsity,
                 "metric": members[0]["metric"], "seeds": len(members)}  # fmt: skip
        for key in ("pruned", "tuned", "prune_seconds"):
            values = [m[key] for m in members]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def table(summary: Sequence[dict[str, Any]], task: str) -> str:
    """A Markdown table: methods down, sparsities across, ``pruned → tuned`` (mean ± sd)."""
    entries = [e for e in summary if e["task"] == task]
    sparsities = sorted({e["target_sparsity"] for e in entries if e["method"] != "dense"})
    metric = entries[0]["metric"]
    unit = "test perplexity (lower is better)" if metric == "ppl" else "test accuracy % "
    head = " | ".join(f"{100 * s:.0f} % removed" for s in sparsities)
    lines = [f"{task}: {unit}; pruned → fine-tuned, mean ± sd", f"| method | {head} |",
             "|---|" + "---|" * len(sparsities)]  # fmt: skip

    def cell(e: dict[str, Any]) -> str:
        digits = 2 if metric == "ppl" else 1
        return (f"{e['pruned']:.{digits}f} ± {e['pruned_sd']:.{digits}f} → "
                f"{e['tuned']:.{digits}f} ± {e['tuned_sd']:.{digits}f}")  # fmt: skip

    for e in entries:
        if e["method"] == "dense":
            lines.append(f"| dense (→ same fine-tune) | {cell(e)} |" + " |" * (len(sparsities) - 1))
    methods = dict.fromkeys(e["method"] for e in entries if e["method"] != "dense")
    for method in methods:
        by = {e["target_sparsity"]: e for e in entries if e["method"] == method}
        lines.append(f"| {method} | " + " | ".join(cell(by[s]) for s in sparsities) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, run every task, print the tables, write rows.csv and summary.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="gpt,vit")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sfpk-steps", type=int, default=None, help="SFPK/SpODE N (default 40)")
    parser.add_argument("--sfpk-particles", type=int, default=None, help="SFPK n (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, 0.5 only")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the rows already in <out>/rows.csv and run only the missing ones",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = QUICK if args.quick else BUDGETS
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    sparsities = [0.5] if args.quick else [float(s) for s in args.sparsities.split(",")]
    out = Path(args.out)
    rows = RowFile(out / "rows.csv", keep=args.resume)
    done = frozenset(row_key(r) for r in rows.rows)
    used = {}
    start = time.perf_counter()
    for name in args.tasks.split(","):
        budget = budgets[name]
        if args.sfpk_steps is not None:
            budget = replace(budget, sfpk_steps=args.sfpk_steps)
        if args.sfpk_particles is not None:
            budget = replace(budget, sfpk_particles=args.sfpk_particles)
        used[name] = asdict(budget)
        run_task(budget, methods=args.methods.split(","), sparsities=sparsities, seeds=seeds,
                 out=out, record=rows, done=done)  # fmt: skip
    summary = aggregate(rows.rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows.rows))  # with --resume, every task
    for name in tasks:
        print("\n" + table(summary, name))
    payload = {
        "sfpk": sfpk.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "quick": args.quick,
        "seeds": {t: sorted({r["seed"] for r in rows.rows if r["task"] == t}) for t in tasks},
        "budgets": used, "summary": summary,
        "wall_seconds": time.perf_counter() - start,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(payload, indent=2, default=_json) + "\n")
    print(f"\nwrote {out / 'rows.csv'} and {out / 'summary.json'} "
          f"({payload['wall_seconds']:.0f} s)")  # fmt: skip
    return rows.rows


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    main()
