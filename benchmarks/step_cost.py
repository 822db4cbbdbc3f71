"""Cost of one SFPK step relative to n plain forward+backward passes of the same batch.

The method's cost model (docs/sfpk-method.md §7) says a step costs ``n·C_fb``; this measures
``ratio = (seconds per SFPK step) / (n × seconds per plain fwd+bwd)`` side by side in one
process, for cnn1d on MNIST-1D-shaped data and (if registered) ResNet-20 on random
3x32x32 data, and writes ``benchmarks/results/step_cost.json``. Target: ratio <= 1.15.

    python benchmarks/step_cost.py                 # short default (< 2 min on 2 cores)
    python benchmarks/step_cost.py --batch-size 512 --resnet-batch-size 512 --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sfpk
from sfpk.masks import Masks
from sfpk.pruners.base import PruneContext
from sfpk.pruners.particles import ParticleOptions
from sfpk.pruners.particles.engine import ParticleSystem
from sfpk.pruners.particles.layout import FlatLayout

RESULTS = Path(__file__).resolve().parent / "results" / "step_cost.json"


def _model(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, input shape, classes); a small stand-in conv net if sfpk.models lacks it."""
    try:
        from sfpk import models

        if name == "cnn1d":
            return models.create("cnn1d", num_classes=10, input_shape=(40,)), (40,), 10
        return models.create("resnet20", num_classes=100), (3, 32, 32), 100
    except Exception:  # models package not ready: an equivalent small net
        if name != "cnn1d":
            raise
        net = nn.Sequential(
            nn.Unflatten(1, (1, 40)),
            nn.Conv1d(1, 32, 5, padding=2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 20, 10),
        )  # fmt: skip
        return net, (40,), 10


def _plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def measure(name: str, args: argparse.Namespace) -> dict:
    """Interleave SFPK steps and n plain fwd+bwd passes; report medians and their ratio."""
    torch.manual_seed(0)
    model, shape, classes = _model(name)
    model.train()
    batch_size = args.batch_size if name == "cnn1d" else args.resnet_batch_size
    x = torch.randn(batch_size, *shape)
    y = torch.randint(0, classes, (batch_size,))
    data = [(x, y)]
    masks = Masks.ones(model)
    options = ParticleOptions(num_particles=args.particles, num_steps=10**6, early_stop=False)
    engine = ParticleSystem(
        model, FlatLayout(model, masks), options, density=0.1, scope="global", ctx=PruneContext()
    )
    engine.init_from_masks(dict(masks))
    draws = engine._draws(data)
    for p in model.parameters():
        p.requires_grad_(False)
    engine.step(draws)  # warm-up (allocations, kernels)
    for p in model.parameters():
        p.requires_grad_(True)
    _plain_step(model, x, y)
    step_times, plain_times = [], []
    for _ in range(args.repeats):
        for p in model.parameters():
            p.requires_grad_(False)
        tic = time.perf_counter()
        for _ in range(args.steps):
            engine.step(draws)
        step_times.append((time.perf_counter() - tic) / args.steps)
        for p in model.parameters():
            p.requires_grad_(True)
        tic = time.perf_counter()
        for _ in range(args.steps * args.particles):
            _plain_step(model, x, y)
        plain_times.append((time.perf_counter() - tic) / args.steps)
    step, plain = statistics.median(step_times), statistics.median(plain_times)
    return {
        "model": name,
        "prunable_entries": engine.layout.num_entries,
        "particles": args.particles,
        "batch_size": batch_size,
        "seconds_per_sfpk_step": step,
        "seconds_per_n_fwd_bwd": plain,
        "ratio": step / plain,
    }


def main() -> None:
    """Parse flags, measure every available model, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn1d,resnet20")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="cnn1d batch (512: the pruning batch, spec §9.1)",
    )
    parser.add_argument("--resnet-batch-size", type=int, default=64, help="resnet20 batch")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1, help="steps per timing repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        try:
            rows.append(measure(name, args))
        except Exception as exc:  # a model that is not registered yet is skipped, not fatal
            print(f"{name}: skipped ({exc})")
    print(f"{'model':10s} {'P_m':>9s} {'n':>3s} {'B':>5s} {'step s':>9s} {'n*fb s':>9s} ratio")
    for r in rows:
        print(
            f"{r['model']:10s} {r['prunable_entries']:9d} {r['particles']:3d} "
            f"{r['batch_size']:5d} {r['seconds_per_sfpk_step']:9.4f} "
            f"{r['seconds_per_n_fwd_bwd']:9.4f} {r['ratio']:.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}; sfpk {sfpk.__version__}")


if __name__ == "__main__":
    main()
