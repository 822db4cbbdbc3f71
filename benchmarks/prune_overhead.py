"""The whole ``sfpk.prune`` call against the raw forward+backward passes it needs.

SFPK with ``N`` steps and ``n`` particles needs ``N·n`` forward+backward passes. For each
model and ``--steps`` value this times, in one process and interleaved (round 0 warms up):

* ``raw``: ``N·n`` plain forward+backward passes of the model on batches already in memory;
* ``sfpk (slicing)``: ``sfpk.prune`` fed a standard ``DataLoader`` over a ``TensorDataset``,
  which sfpk batches by index slicing (``sfpk.index_batches``);
* ``sfpk (per sample)`` (unless ``--no-per-sample``): the same call with slicing switched
  off, i.e. the DataLoader's own sample-by-sample collation.

and reports each call's time over ``raw``, from the medians and from the minima of the
repeats, in CPU time of the process (``time.process_time``; with one thread this is the
work done and does not count the time the process waits for a core on a shared machine;
with two it also counts OpenMP threads spinning at their barriers) and in wall time, the
figure a user sees. Targets (issue #20): slicing ≤ 1.5 × raw for the mnist1d MLP and
≤ 1.1 × raw for cnn1d, at torch's default thread count.

``--threads 1 2`` (the default: 1 and torch's default count) measures each thread count
in its own process: the script re-runs itself with ``OMP_NUM_THREADS`` set, as a user
would, and one JSON holds the rows of all of them (each row has its ``threads`` and the
1-minute load average before and after it).

``--breakdown`` also splits one more slicing call per row into its parts (CPU and wall
time, the minimum over the repeats) by wrapping the engine's functions with timers: the
passes, the data batches, the per-particle thresholds, effective weights and gradient
scatter, the step's vector work (G, repulsion, drift, votes, the distance diagnostic) and
the one-time setup around the simulation.

``--baseline-src DIR`` (another checkout's ``src``) also runs that version's ``sfpk.prune``
in the same process, interleaved with raw passes and this checkout's call (raw, baseline,
raw, this), so both meet the same load; it reports both ratios and whether the masks agree.
``--all-threads`` does the same against this checkout with the engine's one-thread section
(``sfpk.pruners.threads``) switched off, i.e. the step's vector work on every intra-op thread.

    python benchmarks/prune_overhead.py --model mlp --steps 10 --threads 1 2 --breakdown \
        --no-per-sample --baseline-src ../main/src \
        --out benchmarks/results/prune_overhead_threads_mlp.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import subprocess
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
        clock: {"raw": [], "slicing": [], **({"per_sample": []} if args.per_sample else {})}
        for clock in CLOCKS
    }
    for repeat in range(args.repeats + 1):  # round 0 warms up
        results = {"raw": _raw(model, batches)}
        pruner_base.iterate_fast = iterate_fast
        results["slicing"] = _prune(model, dataset, args, steps)
        if args.per_sample:
            pruner_base.iterate_fast = DataLoader.__iter__  # type: ignore[assignment]
            try:
                results["per_sample"] = _prune(model, dataset, args, steps)
            finally:
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
                **{f"{key}_over_raw": v / value["raw"] for key, v in value.items() if key != "raw"},
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
    """Seconds (per clock) of raw / baseline call / raw / current call, interleaved per
    repeat, and whether the two versions' masks agree."""
    batches = _batches(dataset, args, steps)
    times = {clock: {"raw": [], "baseline": [], "current": []} for clock in CLOCKS}
    same = True
    for repeat in range(args.repeats + 1):  # round 0 warms up
        first = _raw(model, batches)
        old = _prune(model, dataset, args, steps, baseline)
        second = _raw(model, batches)
        new = _prune(model, dataset, args, steps)
        same = same and all(torch.equal(old["masks"][n], new["masks"][n]) for n in new["masks"])
        if repeat:
            for clock, by_key in times.items():
                by_key["raw"] += [first[clock], second[clock]]
                by_key["baseline"].append(old[clock])
                by_key["current"].append(new[clock])
    row: dict[str, Any] = {"same_masks": same}
    for clock, by_key in times.items():
        row[clock] = {f"{key}_s": values for key, values in by_key.items()}
        for name, stat in STATS.items():
            value = {key: stat(values) for key, values in by_key.items()}
            row[clock][name] = {
                **{f"{key}_s": v for key, v in value.items()},
                "baseline_over_raw": value["baseline"] / value["raw"],
                "current_over_raw": value["current"] / value["raw"],
            }
    return row


class _AllThreads:
    """``sfpk.prune`` with the engine's one-thread section switched off (``--all-threads``):
    the step's vector work on every intra-op thread, as before ``sfpk.pruners.threads``."""

    @staticmethod
    def prune(*args: Any, **kwargs: Any) -> Any:
        saved = engine.intra_op_threads, energy.intra_op_threads
        engine.intra_op_threads = energy.intra_op_threads = _unchanged_threads
        try:
            return sfpk.prune(*args, **kwargs)
        finally:
            engine.intra_op_threads, energy.intra_op_threads = saved


@contextlib.contextmanager
def _unchanged_threads(count: int) -> Iterator[int]:
    yield torch.get_num_threads()


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
    (engine.ParticleSystem, "step", "engine steps (all of a step)"),
    (methods, "FlatLayout", "setup: flat layout"),
    (methods, "select_topk", "setup: final top-k selection"),
    (engine.ParticleSystem, "state_dict", "setup: final state copy"),
]


def _timed(function: Callable[..., Any], label: str, totals: dict[str, float]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = {clock: read() for clock, read in CLOCKS.items()}
        try:
            return function(*args, **kwargs)
        finally:
            for clock, read in CLOCKS.items():
                totals[f"{clock}:{label}"] += read() - start[clock]

    return wrapper


def _timed_draws(original: Callable, totals: dict[str, float]) -> Callable:
    def draws(self: Any, data: Any) -> Iterator[Any]:
        stream = original(self, data)
        while True:
            start = {clock: read() for clock, read in CLOCKS.items()}
            batch = next(stream)
            for clock, read in CLOCKS.items():
                totals[f"{clock}:data batches"] += read() - start[clock]
            yield batch

    return draws


def _breakdown(model: torch.nn.Module, dataset: TensorDataset, args: Any, steps: int) -> dict:
    """Seconds per part of one slicing call, per clock (minimum over the repeats)."""
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
            total = _prune(model, dataset, args, steps)
            if repeat:
                runs.append({f"{c}:call (sfpk.prune)": total[c] for c in CLOCKS} | totals)
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
        engine.ParticleSystem._draws = saved_draws  # type: ignore[method-assign]
    parts: dict[str, dict[str, float]] = {clock: {} for clock in CLOCKS}
    for key in runs[0]:
        clock, label = key.split(":", 1)
        parts[clock][label] = min(run[key] for run in runs)
    return parts


def _measure(args: Any) -> list[dict]:
    """All rows of this process (one thread count): per model and ``--steps`` value."""
    splits = load_dataset("mnist1d")
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.stack([splits.train[i][1] for i in range(len(splits.train))])
    dataset = TensorDataset(x, y)
    baseline = _load_baseline(args.baseline_src) if args.baseline_src else None
    threads = torch.get_num_threads()
    rows = []
    for model_name in args.model:
        torch.manual_seed(0)
        model = create(model_name, num_classes=10, input_shape=(40,))
        for steps in args.steps:
            load_before = os.getloadavg()[0]
            row = {
                "model": model_name, "steps": steps, "particles": args.particles,
                "batch_size": args.batch_size, "threads": threads, "repeats": args.repeats,
                **_ratios(model, dataset, args, steps),
            }  # fmt: skip
            _print_ratios(row)
            if args.breakdown:
                row["breakdown_s"] = _breakdown(model, dataset, args, steps)
                _print_breakdown(row)
            if baseline is not None:
                row["against_baseline"] = _against(model, dataset, args, steps, baseline)
                _print_against(row, "against_baseline")
            if args.all_threads:
                row["against_all_threads"] = _against(model, dataset, args, steps, _AllThreads)
                print("    baseline = this checkout without the one-thread section:")
                _print_against(row, "against_all_threads")
            row["load_average"] = [load_before, os.getloadavg()[0]]
            print(f"    load average (1 min) before / after: {load_before:.2f} / "
                  f"{row['load_average'][1]:.2f}", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def _print_ratios(row: dict) -> None:
    print(f"{'model':<6} {'thr':>3} {'passes':>6} {'clock':>5} {'stat':>6} {'raw s':>8} "
          f"{'slicing s':>10} {'slicing/raw':>12} {'per-sample/raw':>15}")  # fmt: skip
    for clock in CLOCKS:
        for stat in STATS:
            cell = row[clock][stat]
            per_sample = cell.get("per_sample_over_raw")
            print(f"{row['model']:<6} {row['threads']:>3} {row['steps'] * row['particles']:>6} "
                  f"{clock:>5} {stat:>6} {cell['raw_s']:>8.3f} {cell['slicing_s']:>10.3f} "
                  f"{cell['slicing_over_raw']:>11.2f}x "
                  f"{'' if per_sample is None else f'{per_sample:.2f}x':>15}")  # fmt: skip
    sys.stdout.flush()


def _print_breakdown(row: dict) -> None:
    parts = row["breakdown_s"]
    print(f"    breakdown (min over repeats)                       {'cpu ms':>9} {'wall ms':>9}"
          f"  wall x min raw")  # fmt: skip
    raw = row["wall"]["min"]["raw_s"]
    for label, wall in sorted(parts["wall"].items(), key=lambda item: -item[1]):
        print(f"    {label:<50} {parts['cpu'][label] * 1e3:9.1f} {wall * 1e3:9.1f}  "
              f"{wall / raw:6.3f}")  # fmt: skip


def _print_against(row: dict, key: str) -> None:
    against = row[key]
    for clock in CLOCKS:
        for stat in STATS:
            cell = against[clock][stat]
            print(f"    {clock} {stat:>6}: raw {cell['raw_s']:.3f} s, baseline "
                  f"{cell['baseline_s']:.3f} s ({cell['baseline_over_raw']:.2f}x), "
                  f"this checkout {cell['current_s']:.3f} s "
                  f"({cell['current_over_raw']:.2f}x)")  # fmt: skip
    print(f"    same masks: {against['same_masks']}", flush=True)


def _in_subprocesses(args: Any, argv: list[str]) -> list[dict]:
    """Re-run this script once per ``--threads`` value (``OMP_NUM_THREADS`` set before torch
    starts, as a user would), each writing its rows to a temporary file; their rows."""
    rows = []
    for threads in args.threads:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "rows.json"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            command = [
                sys.executable,
                __file__,
                *argv,
                "--threads",
                str(threads),
                "--out",
                str(out),
            ]
            subprocess.run(command, env=env, check=True)
            rows += json.loads(out.read_text())
    return rows


def main() -> None:
    """Time raw passes and the sfpk.prune call per thread count; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mlp"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None,
        help="intra-op thread counts, each measured in its own process (default: 1 and "
        "torch's default here); without it, only this process's count",
    )  # fmt: skip
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument(
        "--no-per-sample", dest="per_sample", action="store_false",
        help="skip the call with the DataLoader's per-sample collation",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-src", type=Path, default=None,
        help="another checkout's src/ directory: time its sfpk.prune against this one",
    )  # fmt: skip
    parser.add_argument(
        "--all-threads", action="store_true",
        help="also time this checkout with the step's vector work on every thread (baseline)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = sorted({1, torch.get_num_threads()})
    if args.threads == [torch.get_num_threads()]:
        rows = _measure(args)
    else:
        rows = _in_subprocesses(args, _without(argv, ("--threads", "--out")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values."""
    kept, skipping = [], False
    for item in argv:
        if item.startswith("--"):
            skipping = item.split("=", 1)[0] in options
        if not skipping:
            kept.append(item)
    return kept


if __name__ == "__main__":
    main()
