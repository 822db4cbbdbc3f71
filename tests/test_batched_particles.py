"""Batched particles: one vmapped forward+backward for all n particles equals the loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from sfpk.errors import ConfigError
from sfpk.models import create
from sfpk.pruners.particles.batching import particle_grads, resolve_batching

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _cnn1d() -> nn.Module:
    torch.manual_seed(0)
    return create("cnn1d", num_classes=10, channels=(4, 8))


def _batches(count: int = 6, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(size, 40, generator=gen), torch.randint(0, 10, (size,), generator=gen))
        for _ in range(count)
    ]


def test_vmapped_gradients_equal_the_loop_with_batchnorm_in_train_mode():
    """Each particle's loss and weight gradients agree, though BN normalises per batch."""
    model = _cnn1d().train()
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    gen = torch.Generator().manual_seed(1)
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    effective = [
        {n: w.detach() * (torch.rand(w.shape, generator=gen) > 0.3) for n, w in weights.items()}
        for _ in range(3)
    ]
    batches = _batches(3)
    before = {k: b.clone() for k, b in model.named_buffers()}
    loop = particle_grads(model, effective, batches, nn.functional.cross_entropy, "loop")
    after_loop = {k: b.clone() for k, b in model.named_buffers()}
    for k, b in before.items():  # put the statistics back: vmap must not touch them
        dict(model.named_buffers())[k].copy_(b)
    batched = particle_grads(model, effective, batches, nn.functional.cross_entropy, "vmap")
    for (loss_a, grads_a), (loss_b, grads_b) in zip(loop, batched, strict=True):
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(after_loop[k], before[k]) for k in before)  # loop updated BN
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers())  # vmap did not


@pytest.mark.parametrize("method", ["sfpk", "spode"])
def test_sfpk_with_vmapped_particles_gives_the_loops_masks_and_history(method):
    model = _cnn1d()
    data = _batches()
    options = {"num_steps": 4} | ({"num_particles": 3} if method == "sfpk" else {})
    runs = {
        batching: sfpk.run_pruner(
            model,
            data,
            method=method,
            sparsity=0.8,
            seed=2,
            particle_batching=batching,
            **options,
        )  # fmt: skip
        for batching in ("loop", "vmap")
    }
    loop, vmap = runs["loop"], runs["vmap"]
    assert all(torch.equal(loop.masks[n], vmap.masks[n]) for n in loop.masks)
    assert len(loop.history) == len(vmap.history) == 4
    for a, b in zip(loop.history, vmap.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_a_short_last_batch_falls_back_to_the_loop():
    """Batches that cannot be stacked (different sizes) still give every particle's grads."""
    model = _cnn1d()
    weights = {n: p.detach() for n, p in model.named_parameters() if n == "classifier.weight"}
    weights = weights or {n: p.detach() for n, p in list(model.named_parameters())[:1]}
    batches = [_batches(1, 16)[0], _batches(1, 5)[0]]
    out = particle_grads(model, [weights, weights], batches, nn.functional.cross_entropy, "vmap")
    assert len(out) == 2 and all(set(g) == set(weights) for _, g in out)


def test_auto_is_the_loop_on_cpu_and_vmap_elsewhere():
    assert resolve_batching("auto", torch.device("cpu")) == "loop"
    assert resolve_batching("auto", torch.device("cuda", 0)) == "vmap"
    assert resolve_batching("vmap", torch.device("cpu")) == "vmap"
    with pytest.raises(ConfigError, match="particle_batching.*auto, loop, vmap"):
        sfpk.prune(_cnn1d(), _batches(), method="sfpk", sparsity=0.5, particle_batching="gpu")
