"""The whole ``sfpk.prune`` call against the raw forward+backward passes it needs.

SFPK with ``N`` steps and ``n`` particles needs ``N·n`` forward+backward passes. This times,
in one process and interleaved:

* ``raw``: ``N·n`` plain forward+backward passes of the model on batches already in memory;
* ``sfpk (slicing)``: ``sfpk.prune`` fed a standard ``DataLoader`` over a ``TensorDataset``,
  which sfpk batches by index slicing (``sfpk.index_batches``);
* ``sfpk (per sample)``: the same call with slicing switched off, i.e. the DataLoader's own
  sample-by-sample collation.

and reports each call's time over ``raw``. Target (scale issue): slicing ≤ 1.5 × raw for
the mnist1d MLP.

    python benchmarks/prune_overhead.py [--model mlp] [--steps 10] [--particles 10]

Writes ``benchmarks/results/prune_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import sfpk
import sfpk.pruners.base as pruner_base
from sfpk.data import load_dataset
from sfpk.index_batches import iterate_fast
from sfpk.models import create

RESULTS = Path(__file__).resolve().parent / "results" / "prune_overhead.json"


def _raw(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start


def main() -> None:
    """Time raw passes and both sfpk.prune variants; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    splits = load_dataset("mnist1d")
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.stack([splits.train[i][1] for i in range(len(splits.train))])
    dataset = TensorDataset(x, y)
    torch.manual_seed(0)
    model = create(args.model, num_classes=10, input_shape=(40,))
    passes = args.steps * args.particles
    gen = torch.Generator().manual_seed(0)
    batches = [
        (x[idx], y[idx])
        for idx in (torch.randperm(len(x), generator=gen)[: args.batch_size] for _ in range(passes))
    ]

    def call() -> float:
        loader = DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        start = time.perf_counter()
        sfpk.prune(
            model, loader, method="sfpk", sparsity=0.9, num_steps=args.steps,
            num_particles=args.particles, particle_batching="loop",
        )  # fmt: skip
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"raw": [], "slicing": [], "per_sample": []}
    for repeat in range(args.repeats + 1):  # round 0 warms up
        results = {"raw": _raw(model, batches)}
        pruner_base.iterate_fast = iterate_fast
        results["slicing"] = call()
        pruner_base.iterate_fast = DataLoader.__iter__  # type: ignore[assignment]
        results["per_sample"] = call()
        pruner_base.iterate_fast = iterate_fast
        if repeat:
            for key, value in results.items():
                times[key].append(value)
    medians = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "model": args.model, "steps": args.steps, "particles": args.particles,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        **{f"{k}_s": v for k, v in medians.items()},
        "slicing_over_raw": medians["slicing"] / medians["raw"],
        "per_sample_over_raw": medians["per_sample"] / medians["raw"],
    }  # fmt: skip
    print(f"{'model':<8} {'passes':>6} {'raw s':>8} {'slicing s':>10} {'per-sample s':>13} "
          f"{'slicing/raw':>12} {'per-sample/raw':>15}")  # fmt: skip
    print(f"{args.model:<8} {passes:>6} {medians['raw']:>8.3f} {medians['slicing']:>10.3f} "
          f"{medians['per_sample']:>13.3f} {row['slicing_over_raw']:>11.2f}x "
          f"{row['per_sample_over_raw']:>14.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([row], indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
