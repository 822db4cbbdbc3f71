"""Accuracy of every method on MNIST-1D / cnn1d, after pruning and after fine-tuning.

Pretrains one dense cnn1d, then runs ``sfpk oneshot --checkpoint`` for each method and
sparsity with the same seed, and compares the runs with ``sfpk report``. Prints a table and
writes ``benchmarks/results/accuracy.json`` and the report (Markdown + figure) next to it.

Usage: python benchmarks/accuracy.py [--sparsities 0.9,0.95] [--methods ...] [--seeds 0]
The SFPK / SpODE budget is the demo's (N=40 steps, 4 particles), not the paper's N=100, n=10.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dense_cnn1d import COMMON, pretrained_dense

from sfpk.cli import main as sfpk
from sfpk.pipelines.report import write_report

RESULTS = Path(__file__).resolve().parent / "results"
PARTICLE_OPTIONS = {
    "sfpk": ["--option", "num_steps=40", "--option", "num_particles=4"],
    "spode": ["--option", "num_steps=40"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--methods", default="rand,mag,snip,grasp,synflow,spode,sfpk")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--finetune-epochs", default="10")
    parser.add_argument("--out", default=str(RESULTS / "accuracy_runs"))
    args = parser.parse_args()
    out = Path(args.out)
    dense = pretrained_dense(out / "dense")
    rows, runs = [], []
    for seed in args.seeds.split(","):
        for sparsity in args.sparsities.split(","):
            for method in args.methods.split(","):
                run = out / f"{method}-{sparsity}-s{seed}"
                start = time.perf_counter()
                status = sfpk([
                    "oneshot", *COMMON, "--checkpoint", str(dense),
                    "--method", method, "--sparsity", sparsity, "--seed", seed,
                    "--epochs", args.finetune_epochs, "--warmup-epochs", "1",
                    "--report-last-k", "3", "--out", str(run), "--overwrite",
                    *PARTICLE_OPTIONS.get(method, []),
                ])  # fmt: skip
                if status != 0:
                    raise SystemExit(status)
                summary = json.loads((run / "summary.json").read_text())
                rows.append({
                    "method": method, "sparsity": float(sparsity), "seed": int(seed),
                    "dense": summary["dense_test_acc"], "pruned": summary["pruned_test_acc"],
                    "last3": summary["last_k_mean_test_acc"],
                    "prune_s": summary["prune_seconds"], "wall_s": time.perf_counter() - start,
                })  # fmt: skip
                runs.append(run)
    print(f"{'method':<8} {'sparsity':>8} {'dense':>7} {'pruned':>7} {'last-3':>7} {'prune s':>8}")
    for r in rows:
        accs = " ".join(f"{100 * r[k]:>6.2f}%" for k in ("dense", "pruned", "last3"))
        print(f"{r['method']:<8} {r['sparsity']:>8.2f} {accs} {r['prune_s']:>8.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps(rows, indent=2))
    report = write_report(runs, RESULTS / "accuracy_report")
    print(f"wrote {RESULTS / 'accuracy.json'} and {report}")


if __name__ == "__main__":
    main()
