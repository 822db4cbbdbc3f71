"""SFPK's n per-particle passes: the loop against one vmapped pass, per model and device.

For each model, ``particle_grads`` runs the n particles' forward+backward passes both ways
on the same effective weights and batches, interleaved (so machine noise hits both alike),
and the table gives the median seconds and the speed-up of vmap over the loop. ``"auto"``
uses vmap only where this measures it faster (accelerators); see
``sfpk.pruners.particles.batching``.

    python benchmarks/particle_batching.py                         # CPU: mlp, cnn1d
    python benchmarks/particle_batching.py --device cuda --models resnet20 resnet50 \\
        --batch-size 512                                           # GPU (device_check)

Writes ``benchmarks/results/particle_batching.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sfpk.models import create
from sfpk.pruners.particles.batching import particle_grads

RESULTS = Path(__file__).resolve().parent / "results" / "particle_batching.json"
SHAPES = {"mlp": ((40,), 10), "cnn1d": ((40,), 10), "resnet20": ((3, 32, 32), 10),
          "resnet50": ((3, 224, 224), 1000)}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, args: argparse.Namespace) -> dict:
    """Median seconds of the loop and of vmap for ``args.particles`` particles."""
    device = torch.device(args.device)
    shape, classes = SHAPES[name]
    torch.manual_seed(0)
    model = create(name, num_classes=classes, input_shape=shape).to(device).train()
    gen = torch.Generator().manual_seed(1)
    masked = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    effective = [
        {n: p.detach() * (torch.rand(p.shape, generator=gen) > 0.5).to(device)
         for n, p in masked.items()}
        for _ in range(args.particles)
    ]  # fmt: skip
    batches = [
        (torch.randn(args.batch_size, *shape).to(device),
         torch.randint(0, classes, (args.batch_size,)).to(device))
        for _ in range(args.particles)
    ]  # fmt: skip
    times: dict[str, list[float]] = {"loop": [], "vmap": []}
    for repeat in range(args.repeats + 1):  # the first round warms up both paths
        for mode in ("loop", "vmap"):
            _sync(device)
            start = time.perf_counter()
            particle_grads(model, effective, batches, F.cross_entropy, mode)  # type: ignore[arg-type]
            _sync(device)
            if repeat:
                times[mode].append(time.perf_counter() - start)
    loop, vmap = statistics.median(times["loop"]), statistics.median(times["vmap"])
    return {
        "model": name, "device": str(device), "particles": args.particles,
        "batch_size": args.batch_size, "loop_s": loop, "vmap_s": vmap,
        "vmap_speedup": loop / vmap, "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    """Measure every model, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn1d"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(name, args) for name in args.models]
    print(f"{'model':<10} {'device':<8} {'n':>3} {'batch':>6} {'loop s':>9} {'vmap s':>9} "
          f"{'vmap speed-up':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<10} {r['device']:<8} {r['particles']:>3} {r['batch_size']:>6} "
              f"{r['loop_s']:>9.4f} {r['vmap_s']:>9.4f} {r['vmap_speedup']:>13.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
