"""In-memory data batched by index slicing gives the DataLoader's batches, seed for seed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

import sfpk
from sfpk.data import load_dataset, make_loader
from sfpk.data.base import ArrayDataset
from sfpk.data.text import TokenBlocks
from sfpk.index_batches import SlicingLoader, batch_taker, index_batches, iterate_fast


def _datasets():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=gen)
    y = torch.randint(0, 3, (37,), generator=gen)
    tokens = torch.randint(0, 50, (10 * 9,), generator=gen)
    return {
        "tensor": TensorDataset(x, y),
        "array": ArrayDataset(x.to(torch.float64), y.to(torch.int32)),
        "subset": Subset(ArrayDataset(x, y), [3, 1, 4, 15, 9, 2, 6, 5, 35, 8, 0]),
        "tokens": TokenBlocks(tokens, block_size=8),
    }


def _plain(dataset, seed: int, shuffle: bool = True, batch_size: int = 4):
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
    )
    return [list(b) for epoch in range(2) for b in loader]


@pytest.mark.parametrize("kind", ["tensor", "array", "subset", "tokens"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_slicing_gives_the_dataloaders_batches_for_the_same_seed(kind, shuffle):
    """Two epochs of a SlicingLoader equal two epochs of a plain DataLoader, bit for bit."""
    dataset = _datasets()[kind]
    assert batch_taker(dataset) is not None
    fast = SlicingLoader(
        dataset, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(7)
    )
    got = [list(b) for epoch in range(2) for b in fast]
    expected = _plain(dataset, 7, shuffle)
    assert len(got) == len(expected) == 2 * len(fast)
    for a, b in zip(got, expected, strict=True):
        assert all(torch.equal(s, t) and s.dtype == t.dtype for s, t in zip(a, b, strict=True))


def test_make_loader_slices_mnist1d_and_keeps_the_batches():
    train = load_dataset("mnist1d").train
    loader = make_loader(train, batch_size=128, shuffle=True, seed=3)
    assert isinstance(loader, SlicingLoader) and batch_taker(train) is not None
    plain = DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    for (x, y), (u, v) in zip(loader, plain, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_a_per_item_transform_or_custom_collate_iterates_as_a_plain_dataloader():
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    noisy = ArrayDataset(x, y, transform=lambda item: item * 2)
    assert batch_taker(noisy) is None
    loader = SlicingLoader(noisy, batch_size=4)
    assert torch.equal(next(iter(loader))[0], x[:4] * 2)
    custom = SlicingLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda items: len(items))
    assert list(custom) == [4, 2]


def test_prune_with_a_users_dataloader_matches_the_plain_iteration(monkeypatch):
    """sfpk.prune slices a user's DataLoader over a TensorDataset and gets the same masks
    as when it iterates the DataLoader sample by sample."""
    import sfpk.pruners.base as pruner_base

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    dataset = _datasets()["tensor"]

    def loader():
        generator = torch.Generator().manual_seed(1)
        return DataLoader(dataset, batch_size=8, shuffle=True, generator=generator)

    sliced = []
    monkeypatch.setattr(
        pruner_base, "iterate_fast", lambda data: (sliced.append(1), iterate_fast(data))[1]
    )
    options = dict(method="sfpk", sparsity=0.6, num_steps=3, num_particles=2, seed=0)
    fast = sfpk.prune(model, loader(), **options)
    assert sliced  # the fast path was taken
    monkeypatch.setattr(pruner_base, "iterate_fast", DataLoader.__iter__)
    slow = sfpk.prune(model, loader(), **options)
    assert all(torch.equal(fast[n], slow[n]) for n in fast)


def test_worker_count_defaults_to_none_for_memory_data_and_spare_cores_for_files(monkeypatch):
    from sfpk.pipelines.context import _worker_count

    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    decoded = ArrayDataset(x, y, transform=lambda item: item)  # read per item
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert _worker_count(None, ArrayDataset(x, y)) == 0
    assert _worker_count(None, decoded) == 5
    assert _worker_count(3, ArrayDataset(x, y)) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert _worker_count(None, decoded) == 8


def test_creating_an_iterator_draws_what_a_dataloader_iterator_draws():
    """`iter(loader)` alone (as batch_stream's re-iterability probe does) consumes the same
    random numbers from the loader's generator as a plain DataLoader, so later epochs match."""
    dataset = _datasets()["array"]
    states = []
    for kind in (DataLoader, SlicingLoader):
        loader = kind(
            dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        iter(loader)
        states.append(loader.generator.get_state())
    assert torch.equal(states[0], states[1])


def _sampler_cases():
    data = range(37)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    return {
        "random": lambda: RandomSampler(data, generator=gen(5)),
        "random_fewer": lambda: RandomSampler(data, num_samples=20, generator=gen(5)),
        "random_more": lambda: RandomSampler(data, num_samples=90, generator=gen(5)),
        "random_exact_multiple": lambda: RandomSampler(data, num_samples=74, generator=gen(5)),
        "random_global_rng": lambda: RandomSampler(data),
        "sequential": lambda: SequentialSampler(data),
        "with_replacement": lambda: RandomSampler(data, replacement=True, generator=gen(5)),
    }


@pytest.mark.parametrize("case", list(_sampler_cases()))
@pytest.mark.parametrize("batch_size", [4, 37, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_index_batches_are_the_batch_samplers_lists(case, batch_size, drop_last):
    """The tensor batches equal the BatchSampler's index lists, and leave every random
    generator (the sampler's own and torch's global one) in the same state."""
    make = _sampler_cases()[case]
    expected_sampler = BatchSampler(make(), batch_size, drop_last)
    got_sampler = BatchSampler(make(), batch_size, drop_last)
    torch.manual_seed(11)
    expected = [list(b) for b in expected_sampler]
    expected_state = torch.get_rng_state()
    torch.manual_seed(11)
    got = list(index_batches(got_sampler))
    assert torch.equal(torch.get_rng_state(), expected_state)
    assert [b.tolist() for b in got] == expected
    assert all(b.dtype == torch.long for b in got)
    own = getattr(expected_sampler.sampler, "generator", None)
    if own is not None:
        assert torch.equal(got_sampler.sampler.generator.get_state(), own.get_state())


def test_index_batches_draw_the_next_permutation_at_the_same_batch():
    """The generator is advanced batch by batch as the BatchSampler advances it, so a
    partly consumed pass (sfpk stops mid-epoch) leaves the same generator state."""
    for stop in range(1, 11):
        states = []
        for make in (lambda s: iter(s), index_batches):
            sampler = BatchSampler(
                RandomSampler(range(37), num_samples=74, generator=torch.Generator()), 8, False
            )
            sampler.sampler.generator.manual_seed(2)
            batches = make(sampler)
            for _ in range(stop):
                next(batches)
            states.append(sampler.sampler.generator.get_state())
        assert torch.equal(states[0], states[1]), stop
