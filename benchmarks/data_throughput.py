"""CIFAR loader throughput: images/s of sfpk's torch-only augmentation pipeline.

Writes a fake CIFAR-100 (~5000 training images) to a temporary folder, then times full
epochs of the augmented training split with ``num_workers`` 0 and 2 (batch 128), after one
warm-up epoch. Prints a table and writes ``benchmarks/results/data_throughput.json``.

Usage:
    python benchmarks/data_throughput.py [--per-class 50] [--batch-size 128] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from sfpk.data import load_dataset, make_loader
from sfpk.data.fake import write_fake_cifar

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def _images_per_second(dataset, batch_size: int, num_workers: int, epochs: int) -> float:
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    for _ in loader:  # warm-up: starts the (persistent) workers
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for inputs, _labels in loader:
            count += len(inputs)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_fake_cifar(root, 100, args.per_class)
        train = load_dataset("cifar100", data_dir=root).train
        for num_workers in (0, 2):
            rate = _images_per_second(train, args.batch_size, num_workers, args.epochs)
            rows.append({"num_workers": num_workers, "images_per_s": round(rate, 1)})
    print(f"fake CIFAR-100 train split: {len(train)} images, batch {args.batch_size}")
    print(f"{'num_workers':>11}  {'images/s':>10}")
    for row in rows:
        print(f"{row['num_workers']:>11}  {row['images_per_s']:>10.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "train_images": len(train),
        "batch_size": args.batch_size,
        "epochs_timed": args.epochs,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    RESULTS.write_text(json.dumps({"setup": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
