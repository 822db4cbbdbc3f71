"""The collapse guard at extreme sparsity: every method with and without it.

Pretrains one dense model per data set (15 epochs, as the demo: mnist1d/cnn1d, or
digits/cnn_digits), then runs ``sfpk oneshot --checkpoint`` for each method at one sparsity
(default 0.99 removed) with each ``--collapse-guard`` of ``--guards`` (default ``off,row``;
``layer`` keeps one weight per layer instead of one per output row), same seed. SFPK and
SpODE use the paper's defaults (N = 100, n = 10). Prints test accuracy before and after
fine-tuning and how many weights the guard kept, and writes ``benchmarks/results/collapse.json``
(``collapse-<data>.json`` for another data set). A run whose ``summary.json`` exists is read,
not rerun (runs are deterministic), so guards can be added to a finished table.

Usage: python benchmarks/collapse.py [--sparsity 0.99] [--methods ...] [--seeds 0,1]
    [--guards off,row,layer] [--data mnist1d|digits]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dense_cnn1d import COMMON, pretrained_dense

from sfpk.cli import main as sfpk

RESULTS = Path(__file__).resolve().parent / "results"


# Per data set: the shared flags and the pruning batch (digits has 1,293 training images).
DATA_FLAGS = {
    "mnist1d": COMMON,
    "digits": ["--data", "digits", "--model", "cnn_digits", "--quiet", "--device", "cpu",
               "--no-plots", "--prune-batch-size", "128"],
}  # fmt: skip


def _dense(out: Path, data: str) -> Path:
    """The dense weights of ``data``, pretrained (15 epochs) into ``out/dense`` when absent."""
    if data == "mnist1d":
        return pretrained_dense(out / "dense")
    weights = out / "dense" / "model.safetensors"
    if not weights.is_file():
        flags = [f for f in DATA_FLAGS[data] if f not in ("--prune-batch-size", "128")]
        status = sfpk(["pretrain", *flags, "--pretrain-epochs", "15", "--pretrain-lr", "0.05",
                       "--out", str(out / "dense"), "--overwrite"])  # fmt: skip
        if status != 0:
            raise SystemExit(status)
    return weights


def _run(out: Path, dense: Path, method: str, sparsity: str, seed: str, guard: str,
         epochs: str, data: str = "mnist1d") -> dict:  # fmt: skip
    run = out / f"{method}-{sparsity}-{guard}-s{seed}"
    if not (run / "summary.json").is_file():
        status = sfpk([
            "oneshot", *DATA_FLAGS[data], "--checkpoint", str(dense),
            "--method", method, "--sparsity", sparsity, "--seed", seed,
            "--collapse-guard", guard, "--epochs", epochs, "--warmup-epochs", "1",
            "--report-last-k", "3", "--out", str(run), "--overwrite",
        ])  # fmt: skip
        if status != 0:
            raise SystemExit(status)
    summary = json.loads((run / "summary.json").read_text())
    report = summary["collapse_guard"][-1]
    return {
        "method": method, "sparsity": float(sparsity), "seed": int(seed), "guard": guard,
        "pruned": summary["pruned_test_acc"], "last3": summary["last_k_mean_test_acc"],
        "rescued": sum(report["rescued"].values()) if report else 0,
        "mode": report["mode"] if report else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", default="0.99")
    parser.add_argument("--methods", default="rand,mag,snip,grasp,synflow,wanda,spode,sfpk")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--finetune-epochs", default="5")
    parser.add_argument("--guards", default="off,row", help="comma list of off, row, layer")
    parser.add_argument("--data", default="mnist1d", choices=sorted(DATA_FLAGS))
    parser.add_argument("--out", default=None, help="run folder (default: results/collapse_runs)")
    args = parser.parse_args()
    suffix = "" if args.data == "mnist1d" else f"-{args.data}"
    out = Path(args.out or RESULTS / f"collapse_runs{suffix}")
    guards = args.guards.split(",")
    dense = _dense(out, args.data)
    rows = [
        _run(out, dense, method, args.sparsity, seed, guard, args.finetune_epochs, args.data)
        for method in args.methods.split(",")
        for guard in guards
        for seed in args.seeds.split(",")
    ]
    print(f"{'method':<8} {'guard':<5} {'pruned %':>14} {'last-3 %':>14} {'kept by guard':>14}")
    for method in args.methods.split(","):
        for guard in guards:
            cell = [r for r in rows if r["method"] == method and r["guard"] == guard]
            pruned = [100 * r["pruned"] for r in cell]
            last3 = [100 * r["last3"] for r in cell]
            rescued = statistics.fmean(r["rescued"] for r in cell)
            print(f"{method:<8} {guard:<5} {_mean_sd(pruned):>14} {_mean_sd(last3):>14} "
                  f"{rescued:>14.1f}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"collapse{suffix}.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")


def _mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sample sd; the mean alone for one value)."""
    if len(values) < 2:
        return f"{statistics.fmean(values):.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
