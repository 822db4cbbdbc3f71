"""The collapse guard at extreme sparsity: every method with and without it, on MNIST-1D.

Pretrains one dense cnn1d (15 epochs, as the demo), then runs ``sfpk oneshot --checkpoint``
for each method at one sparsity (default 0.99 removed) with ``--collapse-guard row`` and
``off``, same seed. SFPK and SpODE use the paper's defaults (N = 100, n = 10). Prints test
accuracy before and after fine-tuning and how many weights the guard kept, and writes
``benchmarks/results/collapse.json``.

Usage: python benchmarks/collapse.py [--sparsity 0.99] [--methods ...] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dense_cnn1d import COMMON, pretrained_dense

from sfpk.cli import main as sfpk

RESULTS = Path(__file__).resolve().parent / "results"


def _run(out: Path, dense: Path, method: str, sparsity: str, seed: str, guard: str,
         epochs: str) -> dict:  # fmt: skip
    run = out / f"{method}-{sparsity}-{guard}-s{seed}"
    status = sfpk([
        "oneshot", *COMMON, "--checkpoint", str(dense),
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
    parser.add_argument("--out", default=str(RESULTS / "collapse_runs"))
    args = parser.parse_args()
    out = Path(args.out)
    dense = pretrained_dense(out / "dense")
    rows = [
        _run(out, dense, method, args.sparsity, seed, guard, args.finetune_epochs)
        for method in args.methods.split(",")
        for guard in ("off", "row")
        for seed in args.seeds.split(",")
    ]
    print(f"{'method':<8} {'guard':<5} {'pruned %':>10} {'last-3 %':>10} {'kept by guard':>14}")
    for method in args.methods.split(","):
        for guard in ("off", "row"):
            cell = [r for r in rows if r["method"] == method and r["guard"] == guard]
            pruned = statistics.fmean(100 * r["pruned"] for r in cell)
            last3 = statistics.fmean(100 * r["last3"] for r in cell)
            rescued = statistics.fmean(r["rescued"] for r in cell)
            print(f"{method:<8} {guard:<5} {pruned:>10.2f} {last3:>10.2f} {rescued:>14.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "collapse.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS / 'collapse.json'}")


if __name__ == "__main__":
    main()
