"""Fidelity at scale: our SFPK / SpODE against the reference's seeds on the golden 1-D CNN.

Reproduces the protocol of ``tests/golden/README.md`` (fidelity): the trained 1-D CNN of
``cnn_dense.safetensors``, MNIST-1D (4,000 train / 1,000 test), pruning batches of 512 drawn
from a loader over the whole train split that reshuffles every epoch, the paper's settings
(the library defaults: N=100, r=1.4, n=10, exp kernel, λ=0.2, soft vote), the reference's
prunable pool (conv and linear weights plus the classifier bias; ``--no-include-bias`` for
the library's weights-only default), the final mask applied to the dense weights, BatchNorm
recalibrated on 2 shuffled train batches of 512, then test accuracy in eval mode. Each cell
(method × sparsity) runs ``--seeds`` seeds; the table shows our mean ± sd and every seed
next to the reference's (``reference.json``) and checks the targets: mean within 1.5 points
of the reference's, no seed more than 3 points below the reference's worst.

Usage::

    python benchmarks/fidelity.py                   # 7 seeds × 4 cells, ≈ 22 min on one quiet core
    python benchmarks/fidelity.py --quick           # seed 0 of SFPK 95 %, N=10, n=4 (≈ 7 s)
    python benchmarks/fidelity.py --methods sfpk --sparsities 0.95 --seeds 0-9 \\
        --option repulsion_weight=0.1 --no-include-bias   # experiments
    python benchmarks/fidelity.py --eval-split val   # prune on train minus val, score on val

``--eval-split val`` carves a validation split from the train split (``sfpk.data``'s seeded
10 % split), prunes on the rest and measures on it: use it, never the test split, to choose
defaults. Writes ``<out>.csv`` (one row per run) and ``<out>.json`` (rows, summary, settings);
``--out`` defaults to ``benchmarks/results/fidelity``. The golden folder is
``tests/golden/fidelity`` in the repository unless ``--golden DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = ROOT / "tests" / "golden" / "fidelity"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "fidelity"
METHOD_NAMES = {"sfpk": "SFPK", "spode": "SpODE"}
PRUNING_BATCH = 512
BN_BATCHES = 2
# What the table checks (the targets): our mean within 1.5 points of the
# reference's, and no seed more than 3 points below the reference's worst seed.
MEAN_TOLERANCE = 1.5
WORST_TOLERANCE = 3.0


# -- the golden setting ---------------------------------------------------------------------
class GoldenCNN(nn.Module):
    """The fidelity model of the golden README: three Conv1d-BN-ReLU blocks, mean over the
    length, a 64 -> 10 classifier. Parameter names match ``cnn_dense.safetensors``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 64, 5, padding=2, bias=False),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Conv1d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.view(x.shape[0], 1, -1)).mean(-1))


def load_model(golden: Path) -> nn.Module:
    """The dense golden model with its trained weights and BN statistics."""
    from safetensors.torch import load_file

    model = GoldenCNN()
    model.load_state_dict(load_file(str(golden / "cnn_dense.safetensors")))
    return model


def load_reference(golden: Path) -> dict[tuple[str, float], dict[int, float]]:
    """``{(method, density): {seed: accuracy %}}`` from ``reference.json``."""
    data = json.loads((golden / "reference.json").read_text())
    out: dict[tuple[str, float], dict[int, float]] = {}
    for run in data["runs"]:
        out.setdefault((run["method"].lower(), round(run["density"], 6)), {})[run["seed"]] = run[
            "acc_before"
        ]
    return out


def load_data(eval_split: str, carve_val: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """``(pruning data, evaluation data)``: (whole train, test) or (train − val, val).

    ``carve_val`` prunes on train − val (3,600 sequences) even when evaluating on test.
    """
    from sfpk.data import load_dataset

    if eval_split == "test":
        splits = load_dataset("mnist1d", val_fraction=0.1 if carve_val else 0.0, seed=0)
        prune_set, eval_set = splits.train, splits.test
    elif eval_split == "val":
        splits = load_dataset("mnist1d", val_fraction=0.1, seed=0)
        prune_set, eval_set = splits.train, splits.val
    else:
        raise SystemExit(f"--eval-split must be test or val, not {eval_split!r}")

    def tensors(ds: Any) -> TensorDataset:
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return TensorDataset(torch.stack(xs), torch.stack(ys))

    return tensors(prune_set), tensors(eval_set)


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Eval-mode top-1 accuracy in % (one pass over the tensors)."""
    model.eval()
    x, y = data.tensors
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- one run --------------------------------------------------------------------------------
def run_once(
    *,
    method: str,
    sparsity: float,
    seed: int,
    model: nn.Module,
    prune_data: TensorDataset,
    eval_data: TensorDataset,
    options: dict[str, Any],
    include_bias: bool = False,
    batch_size: int = PRUNING_BATCH,
    drop_last: bool = False,
    keep_masks: bool = False,
) -> dict[str, Any]:
    """Prune a copy of ``model`` with the golden protocol; returns one result row.

    The row holds the accuracy, the achieved density, per-layer densities, seconds and the
    engine's per-step history (``PruneResult.history``). The collapse guard is off: the
    reference has none.
    """
    import copy

    import sfpk

    seed_everything(seed)
    loader = DataLoader(
        prune_data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
    work = copy.deepcopy(model)
    tic = time.perf_counter()
    result = sfpk.run_pruner(
        work,
        loader,
        method=method,
        sparsity=sparsity,
        seed=seed,
        include_bias=include_bias,
        collapse_guard="off",
        **options,
    )
    masks = result.masks
    prune_s = time.perf_counter() - tic
    masks.apply(work)
    sfpk.recalibrate_bn(work, loader, batches=BN_BATCHES)
    acc = accuracy(work, eval_data)
    history = list(result.history)
    row = {
        "method": METHOD_NAMES.get(method, method),
        "sparsity": sparsity,
        "density": round(1.0 - sparsity, 6),
        "seed": seed,
        "acc": round(acc, 2),
        "density_achieved": round(masks.density(), 6),
        "layers": {r["name"]: round(1.0 - r["sparsity"], 5) for r in masks.layer_report()},
        "prune_s": round(prune_s, 2),
        "steps": len(history),
        "history": history,
    }
    if keep_masks:
        row["masks"] = masks
    return row


# -- table ----------------------------------------------------------------------------------
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd


def summarize(
    rows: list[dict[str, Any]],
    reference: dict[tuple[str, float], dict[int, float]],
    checks: bool = True,
) -> list[dict[str, Any]]:
    """One summary per cell: ours and the reference's mean ± sd, seeds, and the checks."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["method"], row["density"]), []).append(row)
    out = []
    for (method, density), runs in cells.items():
        ours = [r["acc"] for r in sorted(runs, key=lambda r: r["seed"])]
        ref = reference.get((method.lower(), density), {})
        ref_accs = [ref[s] for s in sorted(ref)]
        m, s = mean_sd(ours)
        rm, rs = mean_sd(ref_accs)
        summary = {
            "method": method,
            "removed": round(1.0 - density, 6),
            "seeds": [r["seed"] for r in sorted(runs, key=lambda r: r["seed"])],
            "ours": ours,
            "ours_mean": round(m, 2),
            "ours_sd": round(s, 2),
            "reference": ref_accs,
            "reference_mean": round(rm, 2),
            "reference_sd": round(rs, 2),
        }
        if ref_accs and checks:
            summary["mean_gap"] = round(m - rm, 2)
            summary["worst_gap"] = round(min(ours) - min(ref_accs), 2)
            summary["mean_ok"] = bool(abs(m - rm) <= MEAN_TOLERANCE)
            summary["worst_ok"] = bool(min(ours) >= min(ref_accs) - WORST_TOLERANCE)
        out.append(summary)
    return out


def format_table(summaries: list[dict[str, Any]]) -> str:
    head = (
        "| removed | method | reference seeds | ref mean ± sd | ours seeds | ours mean ± sd "
        "| Δmean | Δworst | ok |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for s in summaries:
        ok = "yes" if s.get("mean_ok") and s.get("worst_ok") else "NO"
        if "mean_ok" not in s:
            ok = "-"
        lines.append(
            f"| {100 * s['removed']:.0f} % | {s['method']} "
            f"| {', '.join(f'{a:.1f}' for a in s['reference'])} "
            f"| {s['reference_mean']:.1f} ± {s['reference_sd']:.1f} "
            f"| {', '.join(f'{a:.1f}' for a in s['ours'])} "
            f"| {s['ours_mean']:.1f} ± {s['ours_sd']:.1f} "
            f"| {s.get('mean_gap', math.nan):+.1f} | {s.get('worst_gap', math.nan):+.1f} | {ok} |"
        )
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """``true``/``false``/``none``, an int, a float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option wants KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def parse_seeds(text: str) -> list[int]:
    """``"7"`` (a count: seeds 0..6), ``"0-9"`` (a range), ``"3,"`` or ``"0,3,5"`` (a list)."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text:
            lo, hi = text.split("-")
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds:
        raise SystemExit(f"--seeds {text!r}: give a count ('7'), a range ('0-9') or a list ('3,')")
    return seeds


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "method", "removed", "seed", "acc", "density_achieved", "steps", "prune_s",
        "include_bias", "options", "eval_split", "final_G", "final_loss", "layers",
    ]  # fmt: skip
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            hist = r.get("history") or [{}]
            writer.writerow(
                {
                    "method": r["method"],
                    "removed": r["sparsity"],
                    "seed": r["seed"],
                    "acc": r["acc"],
                    "density_achieved": r["density_achieved"],
                    "steps": r["steps"],
                    "prune_s": r["prune_s"],
                    "include_bias": meta["include_bias"],
                    "options": json.dumps(meta["options"], sort_keys=True),
                    "eval_split": meta["eval_split"],
                    "final_G": round(hist[-1].get("mean_G", math.nan), 5),
                    "final_loss": round(hist[-1].get("loss", math.nan), 4),
                    "layers": json.dumps(r["layers"]),
                }
            )
    slim = [{k: v for k, v in r.items() if k not in ("history", "masks")} for r in rows]
    payload = {**meta, "rows": slim}
    if meta.get("with_history"):
        payload["history"] = {
            f"{r['method']}-{r['density']}-{r['seed']}": r["history"] for r in rows
        }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden folder")
    parser.add_argument("--methods", default="sfpk,spode")
    parser.add_argument("--sparsities", default="0.9,0.95", help="fractions removed")
    parser.add_argument("--seeds", default="7", help="'7' = 0..6, '0-9', or '0,3,5'")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option passed to sfpk.prune (repeatable)")  # fmt: skip
    parser.add_argument("--include-bias", action=argparse.BooleanOptionalAction, default=True,
                        help="pool the classifier bias, as the reference's protocol does "
                        "(default); --no-include-bias: the library's default pool, "
                        "weights only")  # fmt: skip
    parser.add_argument("--eval-split", default="test", choices=("test", "val"))
    parser.add_argument("--prune-on-train-minus-val", action="store_true",
                        help="prune on the 3,600 train sequences left after carving val "
                        "(the reference prunes on all 4,000)")  # fmt: skip
    parser.add_argument("--drop-last", action="store_true",
                        help="the pruning loader drops its last partial batch")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: seed 0 of SFPK at 95 %% removed, N=10, n=4")  # fmt: skip
    parser.add_argument("--history", action="store_true", help="keep per-step records in JSON")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output stem")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    seeds = parse_seeds(args.seeds)
    if args.quick:
        methods, sparsities, seeds = ["sfpk"], [0.95], [0]
        options = {"num_steps": 10, "num_particles": 4, **options}
    for m in methods:
        if m not in METHOD_NAMES:
            raise SystemExit(f"--methods: {m!r} is not sfpk or spode")
    if not (args.golden / "reference.json").is_file():
        raise SystemExit(f"no reference.json in {args.golden} (use --golden DIR)")

    reference = load_reference(args.golden)
    model = load_model(args.golden)
    prune_data, eval_data = load_data(args.eval_split, args.prune_on_train_minus_val)
    dense = accuracy(model, eval_data)
    print(f"dense {args.eval_split} accuracy {dense:.1f} %; options {options or '{}'}"
          f"{'; classifier bias pooled' if args.include_bias else ''}", flush=True)  # fmt: skip

    import sfpk

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for method in methods:
        for sparsity in sparsities:
            method_options = dict(options)
            if method == "spode":  # sfpk-only options do not exist for spode
                for key in ("num_particles", "repulsion", "repulsion_weight",
                            "weighted_kernel", "vote", "vote_ratio"):  # fmt: skip
                    method_options.pop(key, None)
            for seed in seeds:
                try:
                    row = run_once(
                        method=method,
                        sparsity=sparsity,
                        seed=seed,
                        model=model,
                        prune_data=prune_data,
                        eval_data=eval_data,
                        options=method_options,
                        include_bias=args.include_bias,
                        drop_last=args.drop_last,
                    )
                except sfpk.ConfigError as exc:
                    raise SystemExit(f"{method}: {exc}") from None
                rows.append(row)
                print(f"{row['method']:>5} removed {sparsity:.2f} seed {seed}: {row['acc']:5.1f} %"
                      f"  ({row['steps']} steps, {row['prune_s']:.1f} s)", flush=True)  # fmt: skip
    wall = time.perf_counter() - start
    summaries = summarize(
        rows, reference if args.eval_split == "test" else {}, checks=not args.quick
    )
    print()
    print(format_table(summaries))
    print(f"\n{len(rows)} runs in {wall:.0f} s ({torch.get_num_threads()} thread(s))")
    meta = {
        "golden": str(args.golden),
        "eval_split": args.eval_split,
        "dense_acc": round(dense, 2),
        "include_bias": args.include_bias,
        "pruning_samples": len(prune_data),
        "drop_last": args.drop_last,
        "options": options,
        "quick": args.quick,
        "seeds": seeds,
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "summary": summaries,
        "with_history": args.history,
    }
    write_outputs(args.out, rows, meta)
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
