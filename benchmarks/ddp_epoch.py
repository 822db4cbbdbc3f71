"""Fine-tuning epoch time with 1 or K data-parallel processes (DDP, gloo on CPU).

    python benchmarks/ddp_epoch.py                                  # 1 process
    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_epoch.py  # 2 ranks

Each rank trains cnn1d on its share of mnist1d (global batch 128, as the pipelines split
it) with ``threads`` intra-op threads; rank 0 prints the median epoch time over
``--epochs`` epochs after one warm-up epoch and appends a row to
``benchmarks/results/ddp_epoch.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from sfpk.data import load_dataset, make_loader
from sfpk.models import create
from sfpk.training import distributed
from sfpk.training.optimizers import OptimizerConfig
from sfpk.training.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "ddp_epoch.json"


def main() -> None:
    """Time the epochs and record them (rank 0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="cnn1d")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    distributed.init_from_env("cpu")
    world, rank = distributed.world_size(), distributed.rank()
    splits = load_dataset("mnist1d")
    torch.manual_seed(0)
    model = create(args.model, num_classes=10, input_shape=(40,))
    trainer = Trainer(model, OptimizerConfig(), device=torch.device("cpu"), progress=False)
    times = []
    for epoch in range(args.epochs + 1):
        sampler = DistributedSampler(splits.train, num_replicas=world, rank=rank, seed=epoch)
        loader = make_loader(
            splits.train, batch_size=args.batch_size // world, shuffle=False, sampler=sampler
        )
        distributed.barrier()
        start = time.perf_counter()
        trainer.train_epoch(loader, lr=0.05)
        distributed.barrier()
        if epoch:
            times.append(time.perf_counter() - start)
    if distributed.is_main():
        row = {
            "model": args.model, "processes": world, "threads_per_process": args.threads,
            "global_batch": args.batch_size, "epoch_s": statistics.median(times),
        }  # fmt: skip
        print(json.dumps(row))
        rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([*rows, row], indent=2) + "\n")
    distributed.shutdown()


if __name__ == "__main__":
    main()
