"""Where eager torch spends a dense and a slim model's forward pass: convs vs BatchNorm/ReLU/add.

Profiles (``torch.profiler``, self CPU time per aten op) the models of
``benchmarks/latency.py`` at one batch size and splits the time into convolutions,
BatchNorm, the elementwise ReLU and residual additions, and the rest (pooling, classifier,
dispatch). If the small CIFAR ResNets were bound by their memory-heavy elementwise ops, the
non-conv share would be large and shrink more slowly than the convs; this measures it.

    nice -n 5 python benchmarks/latency_ops.py --threads 1      # ~1 minute

Prints a Markdown table; writes ``benchmarks/results/latency-ops.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import sfpk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import INPUT_SHAPE, RESULTS, build_pair  # noqa: E402

CATEGORIES = {
    "conv": ("convolution",),
    "batchnorm": ("batch_norm",),
    "relu/add": ("aten::relu", "aten::add", "aten::clamp"),
}


def _category(op: str) -> str:
    """The category of an aten op name: exact names and their ``_`` variants (``aten::relu_``,
    ``aten::add_``, ``aten::clamp_min``), never a longer op such as ``aten::addmm``."""
    for name, patterns in CATEGORIES.items():
        if any(p in op if "::" not in p else op == p or op.startswith(p + "_") for p in patterns):
            return name
    return "other"


def op_times(model: nn.Module, x: torch.Tensor, calls: int) -> dict[str, float]:
    """Milliseconds per call of each category (self CPU time of its aten ops)."""
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    times = dict.fromkeys([*CATEGORIES, "other"], 0.0)
    for event in prof.key_averages():
        times[_category(event.key)] += event.self_cpu_time_total / 1000 / calls
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=10, help="profiled forward passes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    print(
        "| model | removed | kept channels | variant | total ms | conv ms | BN ms | relu/add ms "
        "| other ms | conv share | MACs (M/image) |"
    )
    print("|---" * 11 + "|")
    rows = []
    load_before = os.getloadavg()[0]
    for name in args.models:
        for sparsity in args.sparsities:
            pair = build_pair(name, sparsity)
            for label, model in (("dense", pair.dense), ("slim", pair.slim)):
                times = op_times(model, x, args.calls)
                total = sum(times.values())
                macs = sfpk.count(model, INPUT_SHAPE).macs
                removed = pair.achieved_sparsity
                rows.append(
                    {"model": name, "sparsity": sparsity, "removed": removed, "label": label,
                     "kept_channels": pair.kept_channels, "macs": macs, "total_ms": total,
                     **{f"{k}_ms": v for k, v in times.items()}}
                )  # fmt: skip
                print(
                    f"| {name} | {100 * removed:.1f} % | {pair.kept_channels} | {label} "
                    f"| {total:.1f} | {times['conv']:.1f} | {times['batchnorm']:.1f} "
                    f"| {times['relu/add']:.1f} | {times['other']:.1f} "
                    f"| {100 * times['conv'] / total:.0f} % | {macs / 1e6:.1f} |",
                    flush=True,
                )
    setup = {
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "calls": args.calls,
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency-ops.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
