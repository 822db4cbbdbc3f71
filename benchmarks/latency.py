"""CPU latency of dense vs slim models, in five CPU runtimes (``--runtimes``).

ResNet-20 and ResNet-56 from the zoo (CIFAR-10 head, random init: latency does not depend on
the values) get filter masks that prune **coupled channel groups together**: for every group
of :func:`sfpk.deploy.slim.coupled_channel_groups` but the classifier's, the same fraction of
channels, those with the smallest L2 norm over the group's producing filters, is pruned in
every producer. Masks chosen that way are slimmable by construction (a residual channel is
pruned in every branch), so :func:`sfpk.deploy.slim.slim_model` removes all of them. The fraction
is set so that the slim model has ``sparsity`` of the dense conv/linear weights removed
(its achieved value is in the table).

Dense and slim models are timed in the same process, alternately (dense, slim, dense, ...),
at batch 1 and batch 64; the latency is the median of the repeats and the speed-up is the
median of the paired ratios (robust to load that changes during the run; the load average
is recorded). Beside it: the MAC reduction of the slim model (``sfpk.count``,
conv/linear MACs), and ``speed-up / MAC reduction``; the target is >= 0.7 at batch 64.

Runtimes, each applied to the dense and the slim model alike (``docs/performance.md``):
``torch`` (eager, eval mode), ``torch-folded`` (eager after
:func:`sfpk.deploy.inference.fold_batchnorm`), ``torchscript`` (traced, frozen,
``optimize_for_inference``), ``inductor`` (``torch.compile`` with freezing; needs a C++
compiler) and ``onnxruntime`` (``ORT_ENABLE_ALL``). Every runner's output is checked against
eager torch before it is timed.

    nice -n 5 python benchmarks/latency.py --threads 1 --runtimes torch torch-folded \
        torchscript inductor onnxruntime --tag 1thread      # ~6 minutes with 1 thread
    python benchmarks/latency.py --models resnet20 --sparsities 0.5 --repeats 3   # quick

Prints a Markdown table; writes ``benchmarks/results/latency.csv`` and ``latency.json``
(``latency-TAG.*`` with ``--tag TAG``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import sfpk
from sfpk.deploy.channel_groups import coupled_channel_masks
from sfpk.deploy.export import Architecture
from sfpk.deploy.onnx_export import export_onnx
from sfpk.deploy.slim import ChannelGroup, coupled_channel_groups, slim_model
from sfpk.masks.core import Masks
from sfpk.selection.aligned import max_sparsity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_runtimes import RUNTIMES, ort_layout, runners  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
INPUT_SHAPE = (3, 32, 32)


def _weights(model: nn.Module) -> int:
    """Conv and linear weights (the prunable ones)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() > 1)


def _prunable_groups(model: nn.Module) -> list[ChannelGroup]:
    """The coupled groups of ``model`` but the classifier's (its outputs are the classes)."""
    groups = coupled_channel_groups(model, torch.zeros(1, *INPUT_SHAPE))
    return [g for g in groups if ("fc.weight", 0) not in g.members]


def _cut(size: int, fraction: float, round_to: int) -> int:
    """Channels to prune of a group of ``size``: ``floor(fraction * size)``, or the count
    that leaves a multiple of ``round_to`` channels (the nearest, at least ``round_to``)."""
    kept = size - math.floor(fraction * size)
    if round_to > 1:
        kept = min(size, max(round_to, round(kept / round_to) * round_to))
    return size - kept


def coupled_filter_masks(
    model: nn.Module, groups: list[ChannelGroup], fraction: float, round_to: int = 1
) -> Masks:
    """Filter masks pruning :func:`_cut` channels of every group together.

    A channel's score is the L2 norm of its filters over all the group's producers.
    """
    params = dict(model.named_parameters())
    masks = Masks.ones(model, structure="filter")
    tensors = {n: t.clone() for n, t in masks.items()}
    for group in groups:
        producers = [n for n, dim in group.members if dim == 0 and params[n].dim() > 1]
        score = sum(params[n].detach().flatten(1).pow(2).sum(1) for n in producers)
        cut = torch.argsort(score, stable=True)[: _cut(group.size, fraction, round_to)]
        for name in producers:
            tensors[name][cut] = 0
    return masks.with_tensors(tensors)


def _slim_weights(
    model: nn.Module, groups: list[ChannelGroup], fraction: float, round_to: int
) -> int:
    """Conv/linear weights left once every group has lost :func:`_cut` channels."""
    shrink = {m: g.size for g in groups for m in g.members}
    total = 0
    for name, param in model.named_parameters():
        if param.dim() < 2:
            continue
        shape = list(param.shape)
        for dim in (0, 1):
            size = shrink.get((name, dim))
            if size is not None:  # a dim of k * size entries keeps k per kept channel
                shape[dim] -= shape[dim] // size * _cut(size, fraction, round_to)
        total += math.prod(shape)
    return total


def _fraction_for(
    model: nn.Module, groups: list[ChannelGroup], sparsity: float, round_to: int
) -> float:
    """The channel fraction whose slim model has ~``sparsity`` of the weights removed.

    Both dims of a conv shrink, so removed weights ~ 1 - (1 - fraction)^2; the search
    accounts for the stem and the classifier, which keep one of their dims.
    """
    dense = _weights(model)
    low, high = 0.0, 1.0 - 1e-6
    for _ in range(30):
        mid = (low + high) / 2
        if 1 - _slim_weights(model, groups, mid, round_to) / dense < sparsity:
            low = mid
        else:
            high = mid
    return high


def _time_pair(
    run_dense: Callable[[], object], run_slim: Callable[[], object], repeats: int, inner: int
) -> dict[str, float]:
    """Medians of wall-clock and CPU seconds per call, and of the paired ratios dense / slim.

    The two are timed alternately, so each pair sees about the same machine load. CPU time
    (``time.process_time``, all threads of this process) counts the work done and not the
    time spent waiting for a core, so it is much less sensitive to other processes.
    """
    for _ in range(2):  # warm-up: allocations, oneDNN primitive caches
        run_dense()
        run_slim()
    wall: dict[str, list[float]] = {"dense": [], "slim": []}
    cpu: dict[str, list[float]] = {"dense": [], "slim": []}
    for _ in range(repeats):
        for label, runner in (("dense", run_dense), ("slim", run_slim)):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                runner()
            wall[label].append((time.perf_counter() - start) / inner)
            cpu[label].append((time.process_time() - start_cpu) / inner)

    def ratio(times: dict[str, list[float]]) -> float:
        pairs = zip(times["dense"], times["slim"], strict=True)
        return statistics.median(d / s for d, s in pairs)

    return {
        "dense_ms": 1000 * statistics.median(wall["dense"]),
        "slim_ms": 1000 * statistics.median(wall["slim"]),
        "speedup": ratio(wall),
        "dense_cpu_ms": 1000 * statistics.median(cpu["dense"]),
        "slim_cpu_ms": 1000 * statistics.median(cpu["slim"]),
        "cpu_speedup": ratio(cpu),
    }


@dataclass(frozen=True)
class SlimPair:
    """A dense zoo model, its coupled filter masks and the slim model they give."""

    dense: nn.Module
    slim: nn.Module
    masks: Masks
    fraction: float  # uniform: each group's channel fraction; prune: sfpk.prune's sparsity
    kept_channels: str  # "16->11 32->22 64->44": each group's width, dense -> slim

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of the dense conv/linear weights that the slim model no longer has."""
        return 1 - _weights(self.slim) / _weights(self.dense)


def architecture(spec: str) -> Architecture:
    """A zoo model from ``spec``: a zoo name (``resnet20``) or ``wrn-DEPTH-WIDTH``
    (``wrn-16-4``: the wide ResNet, stage widths 64 / 128 / 256)."""
    if spec.startswith("wrn-"):
        depth, width = (int(v) for v in spec.split("-")[1:])
        return Architecture("wrn", 10, INPUT_SHAPE, {"depth": depth, "width": width})
    return Architecture(spec, num_classes=10, input_shape=INPUT_SHAPE)


def _kept_widths(dense: nn.Module, slim: nn.Module) -> str:
    """Every distinct conv output width, dense -> slim (``"16->16 32->16 64->32"``)."""
    pairs = {
        (a.out_channels, b.out_channels)
        for a, b in zip(dense.modules(), slim.modules(), strict=True)
        if isinstance(a, nn.Conv2d)
    }
    return " ".join(f"{a}->{b}" for a, b in sorted(pairs))


class Unreachable(Exception):
    """The cell's sparsity cannot be had with the aligned widths of ``--round-to``."""


def _pruned_masks_for(
    dense: nn.Module, sample: torch.Tensor, sparsity: float, round_to: int
) -> tuple[Masks, float]:
    """The product's coupled masks (mag, global, ``round_to``) whose slim model has at least
    ``sparsity`` of the dense conv/linear weights removed, the least such, and the
    ``sparsity`` argument that gave them (found by bisection).

    Coupled sparsity counts the producers' weights only, while the slim model also loses the
    consumers' input columns, so the argument is lower than the slim figure. A target the
    aligned widths cannot reach raises :class:`Unreachable`.
    """
    batch = [(sample, torch.zeros(len(sample), dtype=torch.long))]
    dense_weights = _weights(dense)

    def prune(requested: float) -> tuple[Masks, float]:
        masks = sfpk.prune(
            dense, batch, method="mag", structure="coupled", scope="global",
            sparsity=requested, round_to=round_to,
        )  # fmt: skip
        return masks, 1 - _weights(slim_model(dense, masks, sample)) / dense_weights

    # every group at its narrowest allowed width
    widest_cut, narrowest = prune(max_sparsity(coupled_channel_masks(dense, sample), round_to))
    if narrowest < sparsity:
        raise Unreachable(
            f"round_to={round_to} leaves every group at least {round_to} channels wide, so "
            f"at most {narrowest:.1%} of the slim weights can go, not {sparsity:.0%}"
        )
    # coupled sparsity counts producers only: the slim target needs a lower argument
    low, high = 0.01, min(sparsity, widest_cut.sparsity())
    best = prune(high)
    if best[1] < sparsity:  # the global cut's widths differ from the all-narrowest ones
        raise Unreachable(
            f"round_to={round_to}: the largest reachable sparsity argument ({high:.4f}) "
            f"removes only {best[1]:.1%} of the slim weights, not {sparsity:.0%}"
        )
    for _ in range(10):
        mid = (low + high) / 2
        candidate = prune(mid)
        if candidate[1] >= sparsity:
            high, best = mid, candidate
        else:
            low = mid
    return best[0], high


def build_pair(
    name: str, sparsity: float, round_to: int = 1, masks_from: str = "uniform"
) -> SlimPair:
    """``name`` (random init, eval mode) and its slim model with ~``sparsity`` of the
    conv/linear weights removed; the slim outputs are checked against the masked model's.

    ``masks_from="uniform"``: the same channel fraction of every coupled group, found by
    bisection (:func:`coupled_filter_masks`). ``"prune"``: the product's own
    ``sfpk.prune(method="mag", structure="coupled", scope="global", round_to=round_to)``,
    which ranks channels across groups, so the widths differ between groups.
    """
    torch.manual_seed(0)
    dense = architecture(name).build().eval()
    sample = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    if masks_from == "prune":
        masks, fraction = _pruned_masks_for(dense, sample, sparsity, round_to)
    else:
        groups = _prunable_groups(dense)
        fraction = _fraction_for(dense, groups, sparsity, round_to)
        masks = coupled_filter_masks(dense, groups, fraction, round_to)
    slim = slim_model(dense, masks, sample)
    masked = masks.apply(copy.deepcopy(dense))
    torch.testing.assert_close(slim(sample), masked(sample), atol=1e-4, rtol=1e-3)
    return SlimPair(dense, slim, masks, fraction, _kept_widths(dense, slim))


def measure(name: str, sparsity: float, args: argparse.Namespace, folder: Path) -> list[dict]:
    """Rows (every runtime of ``args.runtimes``, every batch size) for one model and sparsity."""
    pair = build_pair(name, sparsity, args.round_to, args.masks)
    dense, slim, masks, fraction = pair.dense, pair.slim, pair.masks, pair.fraction
    sample = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    dense_costs = sfpk.count(dense, INPUT_SHAPE)
    slim_costs = sfpk.count(slim, INPUT_SHAPE)
    files, layout = {}, {}
    if "onnxruntime" in args.runtimes:
        for label, module in (("dense", dense), ("slim", slim)):
            path = folder / f"{name}-{sparsity}-{label}.onnx"
            files[label] = export_onnx(module, path, sample)
            for key, count in ort_layout(files[label]).items():
                layout[f"{label}_ort_{key}"] = count
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))
        inner = max(1, args.inner // batch)
        for runtime in args.runtimes:
            models = {"dense": dense, "slim": slim}
            run_dense, run_slim = runners(runtime, models, files, x, args.threads)
            times = _time_pair(run_dense, run_slim, args.repeats, inner)
            reduction = dense_costs.macs / slim_costs.macs
            rows.append(
                {
                    "model": name,
                    "sparsity": sparsity,
                    "achieved_weight_sparsity": pair.achieved_sparsity,
                    "mask_sparsity": masks.sparsity(),
                    "channel_fraction_or_prune_sparsity": fraction,
                    "kept_channels": pair.kept_channels,
                    "runtime": runtime,
                    "batch": batch,
                    **times,
                    "dense_macs": dense_costs.macs,
                    "slim_macs": slim_costs.macs,
                    "mac_reduction": reduction,
                    "speedup_over_mac_reduction": times["speedup"] / reduction,
                    "target_met": times["speedup"] >= 0.7 * reduction if batch == 64 else None,
                    **{
                        key: layout.get(key) if runtime == "onnxruntime" else None
                        for key in _LAYOUT_KEYS
                    },
                }
            )
            print(_line(rows[-1]), flush=True)
    return rows


_LAYOUT_KEYS = [
    f"{label}_ort_{key}" for label in ("dense", "slim") for key in ("reorders", "plain_convs")
]

HEADER = (
    "| model | removed (slim weights) | runtime | batch | dense ms | slim ms | speed-up "
    "| CPU-time speed-up | MAC reduction | speed-up / MAC red. |"
)


def _line(r: dict) -> str:
    return (
        f"| {r['model']} | {100 * r['achieved_weight_sparsity']:.1f} % | {r['runtime']} "
        f"| {r['batch']} | {r['dense_ms']:.2f} | {r['slim_ms']:.2f} | {r['speedup']:.2f}x "
        f"| {r['cpu_speedup']:.2f}x | {r['mac_reduction']:.2f}x "
        f"| {r['speedup_over_mac_reduction']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet20", "resnet56"], help="zoo names or wrn-D-K"
    )
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--inner", type=int, default=16, help="samples per timed repeat")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument(
        "--round-to", type=int, default=1, help="keep a multiple of this many channels per group"
    )
    parser.add_argument(
        "--masks",
        choices=["uniform", "prune"],
        default="uniform",
        help="uniform: one channel fraction for every group; prune: sfpk.prune (mag, "
        "coupled, global, --round-to)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=["torch", "onnxruntime"],
        help="eager torch, torch with BatchNorm folded, frozen TorchScript, torch.compile "
        "(inductor, freezing) and onnxruntime (ORT_ENABLE_ALL); dense and slim alike",
    )
    parser.add_argument("--tag", default="", help="results go to latency-TAG.csv / .json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(HEADER)
    print("|---" * HEADER.count(" |") + "|")
    rows, unreachable = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for sparsity in args.sparsities:
                try:
                    rows.extend(measure(name, sparsity, args, Path(tmp)))
                except Unreachable as error:
                    print(f"| {name} | {sparsity:.0%} requested: not measured: {error} |")
                    unreachable.append({"model": name, "sparsity": sparsity, "why": str(error)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"latency-{args.tag}" if args.tag else "latency"
    if rows:
        with (RESULTS / f"{stem}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    info = {
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "inner_samples": args.inner,
        "round_to": args.round_to,
        "masks": args.masks,
        "runtimes": args.runtimes,
        "onnxruntime_graph_optimization": "ORT_ENABLE_ALL",
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
    }
    document = {"setup": info, "rows": rows, "unreachable": unreachable}
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=1))
    for runtime in args.runtimes:
        met = [r["target_met"] for r in rows if r["runtime"] == runtime and r["batch"] == 64]
        print(f"{runtime}: batch-64 speed-up >= 0.7 x MAC reduction in {sum(met)}/{len(met)}")


if __name__ == "__main__":
    main()
