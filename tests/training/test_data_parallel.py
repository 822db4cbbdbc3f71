"""Data-parallel fine-tuning (DDP over 2 gloo ranks) equals one process with the same global
batch; masks stay exact on every rank; sharded evaluation gives the single-process figures."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler, Subset, TensorDataset

import sfpk
from helpers import run_gloo_ranks
from sfpk.data import make_loader
from sfpk.training import distributed
from sfpk.training.optimizers import OptimizerConfig
from sfpk.training.trainer import Trainer

WORLD, BATCH, ITEMS = 2, 16, 96


def _setup() -> tuple[nn.Module, TensorDataset, Any]:
    """A seeded MLP (no BatchNorm: gloo has no SyncBatchNorm), data and 0.7 masks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(ITEMS, 12, generator=gen), torch.randint(0, 4, (ITEMS,), generator=gen)
    )
    masks = sfpk.prune(model, [data[:32]], method="mag", sparsity=0.7)
    return model, data, masks


def _train(world: int, rank: int) -> dict[str, Any]:
    """One epoch with global batch BATCH split over ``world`` ranks, then evaluation."""
    model, data, masks = _setup()
    options = OptimizerConfig(epochs=1, batch_size=BATCH, optimizer="sgd", lr=0.1, momentum=0.9)
    trainer = Trainer(model, options, device=torch.device("cpu"), masks=masks, progress=False)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=5)
    loader = make_loader(data, batch_size=BATCH // world, shuffle=False, sampler=sampler)
    trainer.train_epoch(loader, lr=0.1)
    start, stop = distributed.shard_bounds(ITEMS) if world > 1 else (0, ITEMS)
    shard = make_loader(Subset(data, range(start, stop)), batch_size=7, shuffle=False)
    result = trainer.evaluate(shard, sharded=True)
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "masks": {n: m.clone() for n, m in masks.items()},
        "eval": (result.loss, result.top1, result.top5),
        "ddp": type(trainer.train_model).__name__,
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    return run_gloo_ranks(partial(_train, WORLD), WORLD, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(1, 0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # 2 spawned gloo processes
def test_two_ranks_train_as_ddp_to_the_single_process_parameters(ranks, single):
    assert [r["ddp"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert single["ddp"] == "Sequential"
    for r in ranks:
        for name, want in single["params"].items():
            torch.testing.assert_close(r["params"][name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_masks_stay_exact_on_every_rank(ranks):
    for r in ranks:
        for name, mask in r["masks"].items():
            weight = r["params"][name]
            assert bool((weight[mask == 0] == 0).all()), name
            assert bool((weight[mask != 0] != 0).all()), name


@pytest.mark.slow
def test_sharded_evaluation_gives_the_single_process_figures(ranks, single):
    for r in ranks:
        loss, top1, top5 = r["eval"]
        assert loss == pytest.approx(single["eval"][0], rel=1e-5)
        assert (top1, top5) == pytest.approx(single["eval"][1:], abs=0)


def test_shard_bounds_cover_every_item_once_without_padding(monkeypatch):
    covered = []
    for me in range(3):
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        covered += list(range(*distributed.shard_bounds(10)))
    assert covered == list(range(10))
