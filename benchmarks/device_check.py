"""One table of what matters on an accelerator: run by ``benchmarks/device_check.sh``.

Rows (each measured in this process, one GPU):

* SFPK's n=10 particle passes, loop against one vmapped pass: ResNet-20 at batch 512 and
  ResNet-50 at batch 64 (``sfpk.pruners.particles.batching``; ``"auto"`` picks vmap here);
* one bf16 fine-tuning epoch of ResNet-50 on fake ImageNet-shaped data (224x224, batch
  64) against fp32, with the Trainer sfpk's pipelines use;
* peak GPU memory of each row.

Writes ``benchmarks/results/device_check.json``. Needs CUDA; fails with a message without.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sfpk.models import create
from sfpk.pruners.particles.batching import particle_grads
from sfpk.training.optimizers import OptimizerConfig
from sfpk.training.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "device_check.json"


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak GiB) of ``fn`` after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def particle_rows(
    name: str, shape: tuple[int, ...], classes: int, batch: int, n: int
) -> list[dict]:
    """Loop vs vmap for ``n`` particles of ``name``."""
    device = torch.device("cuda")
    model = create(name, num_classes=classes, input_shape=shape).to(device).train()
    masked = {k: p for k, p in model.named_parameters() if p.dim() > 1}
    effective = [
        {k: p.detach() * (torch.rand_like(p) > 0.5) for k, p in masked.items()} for _ in range(n)
    ]
    data = [
        (
            torch.randn(batch, *shape, device=device),
            torch.randint(0, classes, (batch,), device=device),
        )
        for _ in range(n)
    ]
    rows = []
    for mode in ("loop", "vmap"):
        seconds, peak = _timed(
            lambda mode=mode: particle_grads(model, effective, data, F.cross_entropy, mode), 3
        )
        rows.append(
            {
                "check": f"sfpk {n} particles {mode}",
                "model": name,
                "batch": batch,
                "seconds": seconds,
                "peak_gib": peak,
            }
        )
    rows[1]["speedup_vs_loop"] = rows[0]["seconds"] / rows[1]["seconds"]
    return rows


def finetune_rows(batches: int, batch: int) -> list[dict]:
    """One ResNet-50 epoch of ``batches`` fake ImageNet batches in fp32 and bf16."""
    device = torch.device("cuda")
    data = [
        (torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))) for _ in range(batches)
    ]
    rows = []
    for precision in ("fp32", "bf16"):
        model = create("resnet50", num_classes=1000, input_shape=(3, 224, 224))
        trainer = Trainer(
            model,
            OptimizerConfig(),
            device=device,
            progress=False,
            precision=precision,
            channels_last=True,
        )
        seconds, peak = _timed(lambda trainer=trainer: trainer.train_epoch(data, lr=0.01), 1)
        rows.append(
            {
                "check": f"fine-tune epoch {precision}",
                "model": "resnet50",
                "batch": batch,
                "seconds": seconds,
                "peak_gib": peak,
                "images_per_s": batches * batch / seconds,
            }
        )
    return rows


def main() -> None:
    """Run every check and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--epoch-batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("device_check needs a CUDA GPU (torch.cuda.is_available() is False)")
    rows = particle_rows("resnet20", (3, 32, 32), 10, 512, args.particles)
    rows += particle_rows("resnet50", (3, 224, 224), 1000, 64, args.particles)
    rows += finetune_rows(args.epoch_batches, 64)
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'check':<28} {'model':<9} {'batch':>5} {'seconds':>8} {'peak GiB':>9} {'note':>14}")
    for r in rows:
        note = (
            f"{r['speedup_vs_loop']:.2f}x vs loop"
            if "speedup_vs_loop" in r
            else (f"{r['images_per_s']:.0f} img/s" if "images_per_s" in r else "")
        )
        print(
            f"{r['check']:<28} {r['model']:<9} {r['batch']:>5} {r['seconds']:>8.3f} "
            f"{r['peak_gib']:>9.2f} {note:>14}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
