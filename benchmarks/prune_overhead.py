"""The whole ``sfpk.prune`` call against the raw forward+backward passes it needs.

SFPK with ``N`` steps and ``n`` particles needs ``N·n`` forward+backward passes. For each
``--steps`` value this times, in one process and interleaved (round 0 warms up):

* ``raw``: ``N·n`` plain forward+backward passes of the model on batches already in memory;
* ``sfpk (slicing)``: ``sfpk.prune`` fed a standard ``DataLoader`` over a ``TensorDataset``,
  which sfpk batches by index slicing (``sfpk.index_batches``);
* ``sfpk (per sample)``: the same call with slicing switched off, i.e. the DataLoader's own
  sample-by-sample collation.

and reports each call's time over ``raw``, from the medians and from the minima of the
repeats, in CPU time of the process (``time.process_time``; with one thread this is the
work done, and it does not count the time the process waits for a core on a shared
machine) and in wall time. Target (scale issue): slicing ≤ 1.5 × raw for the mnist1d MLP.

``--breakdown`` also splits one more slicing call per ``--steps`` value into its parts (CPU
time, the minimum over the repeats) by wrapping the engine's functions with timers: the
passes, the data batches, the per-particle thresholds, effective weights and gradient
scatter, the step's vector work (G, repulsion, drift, votes, the distance diagnostic) and
the one-time setup around the simulation.

``--baseline-src DIR`` (another checkout's ``src``) also runs that version's ``sfpk.prune``
in the same process, interleaved with raw passes and this checkout's call (raw, baseline,
raw, this), so both meet the same load; it reports both ratios and whether the masks agree.

    OMP_NUM_THREADS=1 python benchmarks/prune_overhead.py --steps 10 100 --breakdown \\
        --baseline-src ../main/src --out benchmarks/results/prune_overhead_1thread.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import sfpk
import sfpk.pruners.base as pruner_base
import sfpk.pruners.particles.batching as batching
import sfpk.pruners.particles.energy as energy
import sfpk.pruners.particles.engine as engine
import sfpk.pruners.particles.methods as methods
from sfpk.data import load_dataset
from sfpk.index_batches import iterate_fast
from sfpk.models import create
from sfpk.pruners.particles.layout import FlatLayout

RESULTS = Path(__file__).resolve().parent / "results" / "prune_overhead.json"
Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"cpu": time.process_time, "wall": time.perf_counter}
# The median is the usual figure; the minimum is the least disturbed repeat of each, which
# on a shared machine is the closer estimate of the uncontended cost.
STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def _raw(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    start = {name: clock() for name, clock in CLOCKS.items()}
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return {name: clock() - start[name] for name, clock in CLOCKS.items()}


def _prune(
    model: torch.nn.Module, dataset: TensorDataset, args: Any, steps: int, library: Any = sfpk
) -> dict:
    """Seconds per clock of one ``library.prune`` call (its masks under ``"masks"``)."""
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    start = {name: clock() for name, clock in CLOCKS.items()}
    masks = library.prune(
        model, loader, method="sfpk", sparsity=0.9, num_steps=steps,
        num_particles=args.particles, particle_batching="loop",
    )  # fmt: skip
    return {**{name: clock() - start[name] for name, clock in CLOCKS.items()}, "masks": masks}


def _batches(dataset: TensorDataset, args: Any, steps: int) -> list[tuple[Tensor, Tensor]]:
    """The raw passes' batches: ``N·n`` random batches, built before the clock starts."""
    x, y = dataset.tensors
    gen = torch.Generator().manual_seed(0)
    return [
        (x[idx], y[idx])
        for idx in (
            torch.randperm(len(x), generator=gen)[: args.batch_size]
            for _ in range(steps * args.particles)
        )
    ]


def _ratios(model: torch.nn.Module, dataset: TensorDataset, args: Any, steps: int) -> dict:
    """Seconds of raw / slicing / per-sample per repeat and clock, their medians and
    minima, and the ratios of each to raw."""
    batches = _batches(dataset, args, steps)
    times: dict[str, dict[str, list[float]]] = {
        clock: {"raw": [], "slicing": [], "per_sample": []} for clock in CLOCKS
    }
    for repeat in range(args.repeats + 1):  # round 0 warms up
        results = {"raw": _raw(model, batches)}
        pruner_base.iterate_fast = iterate_fast
        results["slicing"] = _prune(model, dataset, args, steps)
        pruner_base.iterate_fast = DataLoader.__iter__  # type: ignore[assignment]
        results["per_sample"] = _prune(model, dataset, args, steps)
        pruner_base.iterate_fast = iterate_fast
        if repeat:
            for key, by_clock in results.items():
                for clock in CLOCKS:
                    times[clock][key].append(by_clock[clock])
    row: dict[str, Any] = {}
    for clock, by_key in times.items():
        row[clock] = {f"{key}_s": values for key, values in by_key.items()}
        for name, stat in STATS.items():
            value = {key: stat(values) for key, values in by_key.items()}
            row[clock][name] = {
                **{f"{key}_s": v for key, v in value.items()},
                "slicing_over_raw": value["slicing"] / value["raw"],
                "per_sample_over_raw": value["per_sample"] / value["raw"],
            }
    return row


# -- against another version of sfpk, in the same process ---------------------------------
def _load_baseline(src: Path) -> Any:
    """Import the ``sfpk`` package of another checkout's ``src`` as ``sfpk_baseline``.

    A copy under that name lets both versions run in one process, call after call, so
    they meet the same machine load (the package imports itself relatively).
    """
    root = Path(tempfile.mkdtemp(prefix="sfpk_baseline_"))
    shutil.copytree(src / "sfpk", root / "sfpk_baseline")
    sys.path.insert(0, str(root))
    return importlib.import_module("sfpk_baseline")


def _against(
    model: torch.nn.Module, dataset: TensorDataset, args: Any, steps: int, baseline: Any
) -> dict:
    """CPU seconds of raw / baseline call / raw / current call, interleaved per repeat."""
    batches = _batches(dataset, args, steps)
    times: dict[str, list[float]] = {"raw": [], "baseline": [], "current": []}
    same = True
    for repeat in range(args.repeats + 1):  # round 0 warms up
        first = _raw(model, batches)["cpu"]
        old = _prune(model, dataset, args, steps, baseline)
        second = _raw(model, batches)["cpu"]
        new = _prune(model, dataset, args, steps)
        same = same and all(torch.equal(old["masks"][n], new["masks"][n]) for n in new["masks"])
        if repeat:
            times["raw"] += [first, second]
            times["baseline"].append(old["cpu"])
            times["current"].append(new["cpu"])
    row: dict[str, Any] = {"cpu_s": times, "same_masks": same}
    for name, stat in STATS.items():
        value = {key: stat(values) for key, values in times.items()}
        row[name] = {
            **{f"{key}_s": v for key, v in value.items()},
            "baseline_over_raw": value["baseline"] / value["raw"],
            "current_over_raw": value["current"] / value["raw"],
        }
    return row


# -- breakdown ------------------------------------------------------------------------------
_PARTS: list[tuple[Any, str, str]] = [
    (batching, "effective_weight_grads", "passes (forward+backward)"),
    (energy, "process", "per particle: threshold (polarisation)"),
    (FlatLayout, "effective_weights", "per particle: effective weights θ ⊙ p"),
    (FlatLayout, "mask_gradient_", "per particle: gradient scatter to the flat row"),
    (engine.ParticleSystem, "_levels", "per step: G and -∇G"),
    (engine.ParticleSystem, "_repel", "per step: repulsion"),
    (engine.ParticleSystem, "_move", "per step: drift and move"),
    (engine.ParticleSystem, "_vote", "per step: votes"),
    (engine, "mean_distance", "per step: distance diagnostic"),
    (engine.ParticleSystem, "run", "engine.run (the simulation)"),
    (methods, "FlatLayout", "setup: flat layout"),
    (methods, "select_topk", "setup: final top-k selection"),
    (engine.ParticleSystem, "state_dict", "setup: final state copy"),
]


def _timed(function: Callable[..., Any], label: str, totals: dict[str, float]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] += time.process_time() - start

    return wrapper


def _timed_draws(original: Callable, totals: dict[str, float]) -> Callable:
    def draws(self: Any, data: Any) -> Iterator[Any]:
        stream = original(self, data)
        while True:
            start = time.process_time()
            batch = next(stream)
            totals["data batches"] += time.process_time() - start
            yield batch

    return draws


def _breakdown(model: torch.nn.Module, dataset: TensorDataset, args: Any, steps: int) -> dict:
    """CPU seconds per part of one slicing call (minimum over the repeats)."""
    totals: dict[str, float] = defaultdict(float)
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _PARTS]
    saved_draws = engine.ParticleSystem._draws
    for owner, name, label in _PARTS:
        setattr(owner, name, _timed(getattr(owner, name), label, totals))
    engine.ParticleSystem._draws = _timed_draws(saved_draws, totals)  # type: ignore[method-assign]
    runs = []
    try:
        for repeat in range(args.repeats + 1):
            totals.clear()
            total = _prune(model, dataset, args, steps)["cpu"]
            if repeat:
                runs.append({"call (sfpk.prune)": total, **totals})
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
        engine.ParticleSystem._draws = saved_draws  # type: ignore[method-assign]
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    """Time raw passes and both sfpk.prune variants; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument(
        "--baseline-src", type=Path, default=None,
        help="another checkout's src/ directory: time its sfpk.prune against this one",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    splits = load_dataset("mnist1d")
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.stack([splits.train[i][1] for i in range(len(splits.train))])
    dataset = TensorDataset(x, y)
    torch.manual_seed(0)
    model = create(args.model, num_classes=10, input_shape=(40,))
    baseline = _load_baseline(args.baseline_src) if args.baseline_src else None
    rows = []
    print(f"{'model':<6} {'passes':>6} {'clock':>5} {'stat':>6} {'raw s':>8} {'slicing s':>10} "
          f"{'per-sample s':>13} {'slicing/raw':>12} {'per-sample/raw':>15}")  # fmt: skip
    for steps in args.steps:
        row = {
            "model": args.model, "steps": steps, "particles": args.particles,
            "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "repeats": args.repeats, **_ratios(model, dataset, args, steps),
        }  # fmt: skip
        for clock in CLOCKS:
            for stat in STATS:
                cell = row[clock][stat]
                print(f"{args.model:<6} {steps * args.particles:>6} {clock:>5} {stat:>6} "
                      f"{cell['raw_s']:>8.3f} {cell['slicing_s']:>10.3f} "
                      f"{cell['per_sample_s']:>13.3f} {cell['slicing_over_raw']:>11.2f}x "
                      f"{cell['per_sample_over_raw']:>14.2f}x")  # fmt: skip
        if args.breakdown:
            parts = _breakdown(model, dataset, args, steps)
            raw = row["cpu"]["min"]["raw_s"]
            row["breakdown_cpu_s"] = parts
            for label, seconds in sorted(parts.items(), key=lambda item: -item[1]):
                print(f"    {label:<48} {seconds * 1e3:8.1f} ms  {seconds / raw:6.3f} x min raw")
        if baseline is not None:
            row["against_baseline"] = _against(model, dataset, args, steps, baseline)
            for stat in STATS:
                cell = row["against_baseline"][stat]
                print(f"    cpu {stat:>6}: raw {cell['raw_s']:.3f} s, baseline "
                      f"{cell['baseline_s']:.3f} s ({cell['baseline_over_raw']:.2f}x), "
                      f"this checkout {cell['current_s']:.3f} s "
                      f"({cell['current_over_raw']:.2f}x)")  # fmt: skip
            print(f"    same masks: {row['against_baseline']['same_masks']}")
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
