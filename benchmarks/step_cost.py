"""Cost of SFPK: one step relative to n plain forward+backward passes, and memory per particle.

**Step cost.** The method's cost model (docs/sfpk-method.md §7) says a step costs ``n·C_fb``;
this measures ``ratio = (seconds per SFPK step) / (n × seconds per plain fwd+bwd)`` side by
side in one process (the two interleaved, medians of the repeats), on the same batch.
Target: ratio <= 1.15.

**Memory** (``--memory 1,5,10``). For each particle count n it builds the engine and runs
``--memory-steps`` steps, then reports

* ``state_bytes_per_particle``: the bytes of the engine's ``[n, P_m]`` tensors (particles,
  forces, -∇G, work buffer) divided by n, counted from the tensors themselves;
* the peak memory of the steps: on CPU the peak RSS of a fresh subprocess per n above its
  RSS before the engine was built (the peak is reset there, and glibc unmaps every freed
  block of 64 KiB or more, so the RSS follows the live tensors), on CUDA
  ``max_memory_allocated`` above what was allocated before the engine was built;
* ``peak_bytes_per_particle``: the least-squares slope of that peak against n, i.e. what
  each extra particle costs in practice (state plus temporaries that scale with n).

Workloads: ``cnn1d`` (MNIST-1D-shaped data), ``resnet20`` (random 3x32x32) and ``gpt_tiny``
(random byte tokens, blocks of 64, next-token loss). ``benchmarks/transformer_cost_gpu.py``
runs the same measurements for a GPT-2-small-sized model on CUDA.

    python benchmarks/step_cost.py                                  # cnn1d, resnet20, gpt_tiny
    python benchmarks/step_cost.py --models gpt_tiny --memory 1,5,10 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sfpk
from sfpk import models
from sfpk.losses import next_token_loss
from sfpk.masks.core import Masks
from sfpk.pruners.base import PruneContext
from sfpk.pruners.particles import ParticleOptions
from sfpk.pruners.particles.engine import ParticleSystem
from sfpk.pruners.particles.layout import FlatLayout

RESULTS = Path(__file__).resolve().parent / "results" / "step_cost.json"
GPT_TOKENS = 64  # block length of the gpt_tiny workload (the transformers benchmark's)
GPT_VOCAB = 256  # byte tokens


@dataclass
class Workload:
    """A model, one batch and its loss: what one plain forward+backward computes."""

    name: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    loss_fn: Callable[[Tensor, Tensor], Tensor]

    @property
    def batch_size(self) -> int:
        """Items in the batch (sequences for a language model)."""
        return len(self.inputs)


def workload(name: str, batch_size: int, device: torch.device) -> Workload:
    """The named workload on ``device``, with random data of its shape, seeded."""
    torch.manual_seed(0)
    if name == "cnn1d":
        model = models.create("cnn1d", num_classes=10, input_shape=(40,))
        x, y = torch.randn(batch_size, 40), torch.randint(0, 10, (batch_size,))
        loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    elif name == "resnet20":
        model = models.create("resnet20", num_classes=100)
        x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 100, (batch_size,))
        loss = F.cross_entropy
    elif name == "gpt_tiny":
        model = models.create("gpt_tiny", num_classes=GPT_VOCAB, input_shape=(GPT_TOKENS,))
        x = torch.randint(0, GPT_VOCAB, (batch_size, GPT_TOKENS))
        y = torch.randint(0, GPT_VOCAB, (batch_size, GPT_TOKENS))
        loss = next_token_loss
    else:
        raise ValueError(f"unknown workload {name!r}: cnn1d, resnet20 or gpt_tiny")
    return Workload(name, model.to(device).train(), x.to(device), y.to(device), loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_engine(work: Workload, particles: int, *, density: float = 0.1) -> ParticleSystem:
    """An SFPK engine with the paper's options and ``particles`` particles, started dense."""
    device = next(work.model.parameters()).device
    masks = Masks.ones(work.model)
    options = ParticleOptions(num_particles=particles, num_steps=10**6, early_stop=False)
    ctx = PruneContext(device=device)
    ctx.loss_fn = work.loss_fn
    engine = ParticleSystem(
        work.model, FlatLayout(work.model, masks), options, density=density, scope="global",
        ctx=ctx,
    )  # fmt: skip
    engine.init_from_masks(dict(masks))
    return engine


def _frozen(model: nn.Module, frozen: bool) -> None:
    """θ is frozen during SFPK steps (as in ``sfpk.prune``) and trainable for the plain pass."""
    for p in model.parameters():
        p.requires_grad_(not frozen)


def _plain_step(work: Workload) -> None:
    work.model.zero_grad(set_to_none=True)
    work.loss_fn(work.model(work.inputs), work.targets).backward()


def measure(work: Workload, *, particles: int, steps: int, repeats: int) -> dict[str, Any]:
    """Interleave SFPK steps and ``particles`` plain fwd+bwd passes; medians and their ratio."""
    device = work.inputs.device
    engine = make_engine(work, particles)
    draws = engine._draws([(work.inputs, work.targets)])
    _frozen(work.model, True)
    engine.step(draws)  # warm-up (allocations, kernels)
    _frozen(work.model, False)
    _plain_step(work)
    step_times, plain_times = [], []
    for _ in range(repeats):
        _frozen(work.model, True)
        _sync(device)
        tic = time.perf_counter()
        for _ in range(steps):
            engine.step(draws)
        _sync(device)
        step_times.append((time.perf_counter() - tic) / steps)
        _frozen(work.model, False)
        tic = time.perf_counter()
        for _ in range(steps * particles):
            _plain_step(work)
        _sync(device)
        plain_times.append((time.perf_counter() - tic) / steps)
    work.model.zero_grad(set_to_none=True)
    step, plain = statistics.median(step_times), statistics.median(plain_times)
    return {
        "model": work.name,
        "device": device.type,
        "parameters": sum(p.numel() for p in work.model.parameters()),
        "prunable_entries": engine.layout.num_entries,
        "particles": particles,
        "batch_size": work.batch_size,
        "seconds_per_sfpk_step": step,
        "seconds_per_n_fwd_bwd": plain,
        "ratio": step / plain,
    }


def state_bytes_per_particle(engine: ParticleSystem) -> int:
    """Bytes of the engine's per-particle tensors (those shaped ``[n, P_m]``), divided by n."""
    n, size = engine.options.num_particles, engine.layout.num_entries
    tensors = [
        t for t in vars(engine).values()
        if isinstance(t, Tensor) and t.dim() == 2 and tuple(t.shape) == (n, size)
    ]  # fmt: skip
    return sum(t.numel() * t.element_size() for t in tensors) // n


def reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); the RSS.

    Without the reset the peak would be the high-water mark of everything before (imports,
    model initialisation), which the engine's allocations may never exceed.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak below is then a high-water mark
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024


def engine_peak(work: Workload, particles: int, steps: int) -> dict[str, Any]:
    """Build an engine of ``particles`` particles, run ``steps`` steps; state and peak memory.

    CUDA: peak allocated above what was allocated before the engine. CPU: the peak RSS above
    the RSS before the engine (the peak is reset first; one fresh process per point, see
    :func:`memory_curve`, so freed memory of earlier points cannot hide growth).
    """
    device = work.inputs.device
    _frozen(work.model, False)
    _plain_step(work)  # the plain pass's own peak is part of the baseline
    work.model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = reset_peak_rss()
    engine = make_engine(work, particles)
    draws = engine._draws([(work.inputs, work.targets)])
    _frozen(work.model, True)
    for _ in range(steps):
        engine.step(draws)
    _sync(device)
    _frozen(work.model, False)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = peak_rss_bytes() - before
    result = {
        "particles": particles,
        "state_bytes_per_particle": state_bytes_per_particle(engine),
        "peak_growth_bytes": peak,
    }
    del engine, draws
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def memory_curve(
    name: str,
    counts: Sequence[int],
    *,
    batch_size: int,
    steps: int,
    device: torch.device,
    build: Callable[[], Workload] | None = None,
) -> dict[str, Any]:
    """Peak memory of ``steps`` SFPK steps for each particle count, and its slope.

    On CPU every count runs in a fresh subprocess (memory freed by an earlier point could
    hide a later point's growth); on CUDA all run here, one after the other. ``build`` makes
    the workload instead of :func:`workload` and runs every point here, also on CPU.
    """
    points = []
    if device.type == "cuda" or build is not None:
        work = build() if build is not None else workload(name, batch_size, device)
        points = [engine_peak(work, n, steps) for n in counts]
    else:
        for n in counts:
            command = [sys.executable, __file__, "--child", f"{name},{batch_size},{n},{steps}",
                       "--threads", str(torch.get_num_threads())]  # fmt: skip
            out = subprocess.run(
                command, check=True, capture_output=True, text=True, env=_child_env()
            ).stdout
            points.append(json.loads(out.strip().splitlines()[-1]))
    counts_used = [p["particles"] for p in points]
    peaks = [p["peak_growth_bytes"] for p in points]
    return {
        "model": name,
        "device": device.type,
        "batch_size": batch_size,
        "steps": steps,
        "points": points,
        "state_bytes_per_particle": points[-1]["state_bytes_per_particle"],
        "peak_bytes_per_particle": slope(counts_used, peaks),
    }


def _child_env() -> dict[str, str]:
    """The environment of a CPU memory point: glibc serves every block of 64 KiB or more
    with its own mmap and unmaps it when freed, so the RSS follows the live tensors instead
    of keeping freed heap pages (which would make the peak depend on allocation order)."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def _child(spec: str) -> None:
    """Subprocess entry: one memory point on CPU, printed as JSON."""
    name, batch_size, particles, steps = spec.split(",")
    work = workload(name, int(batch_size), torch.device("cpu"))
    print(json.dumps(engine_peak(work, int(particles), int(steps))))


def print_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """The step-cost table."""
    print(f"{'model':12s} {'P_m':>11s} {'n':>3s} {'B':>5s} {'step s':>9s} {'n*fb s':>9s} ratio")
    for r in rows:
        print(
            f"{r['model']:12s} {r['prunable_entries']:11d} {r['particles']:3d} "
            f"{r['batch_size']:5d} {r['seconds_per_sfpk_step']:9.4f} "
            f"{r['seconds_per_n_fwd_bwd']:9.4f} {r['ratio']:.3f}"
        )


def print_memory(curves: Sequence[dict[str, Any]]) -> None:
    """The memory table: state and measured peak growth per particle, in MiB."""
    mib = 2.0**20
    for c in curves:
        points = ", ".join(
            f"n={p['particles']}: {p['peak_growth_bytes'] / mib:.1f}" for p in c["points"]
        )
        print(
            f"{c['model']} ({c['device']}, B={c['batch_size']}): state "
            f"{c['state_bytes_per_particle'] / mib:.2f} MiB/particle, peak growth "
            f"{c['peak_bytes_per_particle'] / mib:.2f} MiB/particle (peaks MiB {points})"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, measure every workload, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn1d,resnet20,gpt_tiny")
    parser.add_argument(
        "--batch-size", type=int, default=512,
        help="cnn1d batch (512: the pruning batch, spec §9.1)",
    )  # fmt: skip
    parser.add_argument("--resnet-batch-size", type=int, default=64, help="resnet20 batch")
    parser.add_argument(
        "--gpt-batch-size", type=int, default=32,
        help="gpt_tiny batch of 64-token blocks (32: the transformers benchmark's)",
    )  # fmt: skip
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1, help="steps per timing repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory", default="", help="particle counts for memory, e.g. 1,5,10")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child)
        return
    cpu = torch.device("cpu")
    sizes = {"cnn1d": args.batch_size, "resnet20": args.resnet_batch_size,
             "gpt_tiny": args.gpt_batch_size}  # fmt: skip
    names = args.models.split(",")
    rows = []
    for name in names:
        work = workload(name, sizes[name], cpu)
        rows.append(measure(work, particles=args.particles, steps=args.steps,
                            repeats=args.repeats))  # fmt: skip
    print_ratios(rows)
    curves = []
    if args.memory:
        counts = [int(n) for n in args.memory.split(",")]
        curves = [memory_curve(name, counts, batch_size=sizes[name], steps=args.memory_steps,
                               device=cpu) for name in names]  # fmt: skip
        print_memory(curves)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
               "memory": curves}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}; sfpk {sfpk.__version__}")


if __name__ == "__main__":
    main()
