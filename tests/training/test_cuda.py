"""Device placement: what runs on a GPU, and a GPU checkpoint resumed on CPU.

The CUDA tests run only where CUDA is available (``benchmarks/device_check.sh`` runs them on
a GPU machine); the CPU test emulates a state saved on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import sfpk
from helpers import model_and_batches

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _prune(device: str, **extra):
    model, data = model_and_batches("conv_bn", count=4)
    model = model.to(device)
    data = [(x.to(device), y.to(device)) for x, y in data]
    return (
        model,
        data,
        sfpk.run_pruner(
            model, data, method="sfpk", sparsity=0.8, seed=1, num_steps=3, num_particles=3, **extra
        ),
    )


def test_a_gpu_particle_state_resumes_on_cpu(monkeypatch):
    """A state holding a CUDA generator state (as one saved on a GPU does) continues on a
    CPU-only machine without touching CUDA."""
    model, data, first = _prune("cpu")
    state = dict(first.state)
    state["rng"] = {**state["rng"], "cuda": torch.zeros(16, dtype=torch.uint8)}

    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU resume must not set a CUDA generator state")

    monkeypatch.setattr(torch.cuda, "set_rng_state", no_cuda)
    from sfpk.pruners.particles.state import restore_rng

    restore_rng(state["rng"], torch.device("cpu"))
    second = sfpk.run_pruner(
        model, data, method="sfpk", sparsity=0.9, seed=1, num_steps=3, num_particles=3,
        masks=first.masks, start=sfpk.StartState(state),
    )  # fmt: skip
    assert abs(second.masks.sparsity() - 0.9) < 0.01


@cuda
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_sfpk_on_cuda_keeps_particles_and_masks_on_the_gpu(batching):
    model, data, result = _prune("cuda", particle_batching=batching)
    assert all(m.device.type == "cuda" for m in result.masks.values())
    assert result.state["particles"].device.type == "cuda"
    _, _, cpu = _prune("cpu")
    kept = sum(int((cpu.masks[n] != 0).sum()) for n in cpu.masks)
    both = sum(int(((cpu.masks[n] != 0) & (result.masks[n].cpu() != 0)).sum()) for n in cpu.masks)
    assert both / kept >= 0.9  # same seeds; GPU kernels differ in the last bits


def _kept_agreement(a: sfpk.Masks, b: sfpk.Masks) -> float:
    """The fraction of ``a``'s kept entries that ``b`` keeps too."""
    kept = sum(int((a[n] != 0).sum()) for n in a)
    return sum(int(((a[n] != 0) & (b[n].to(a[n].device) != 0)).sum()) for n in a) / kept


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sfpk_vmap_under_autocast_on_cuda_prunes_a_batchnorm_net(precision):
    """The vmapped pass under autocast with BatchNorm (whose vmap batching rule cannot mix a
    low-precision input with fp32 statistics): exact sparsity, and as close to the fp32
    masks as the loop at the same precision (the yardstick of
    tests/pruners/test_batched_particles.py)."""
    _, _, vmap = _prune("cuda", particle_batching="vmap", precision=precision)
    _, _, loop = _prune("cuda", particle_batching="loop", precision=precision)
    _, _, fp32 = _prune("cuda", particle_batching="loop")
    total = vmap.masks.total_weights()
    assert total - vmap.masks.kept_weights() == math.floor(0.8 * total)
    assert all(m.dtype == torch.float32 for m in vmap.masks.values())
    low_precision_agreement = _kept_agreement(fp32.masks, loop.masks)
    assert _kept_agreement(fp32.masks, vmap.masks) >= low_precision_agreement - 0.05


@cuda
def test_a_gpu_state_saved_to_disk_continues_on_cpu(tmp_path):
    model, data, result = _prune("cuda")
    torch.save(result.state, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=False)
    cpu_model = model.cpu()
    cpu_data = [(x.cpu(), y.cpu()) for x, y in data]
    second = sfpk.run_pruner(
        cpu_model, cpu_data, method="sfpk", sparsity=0.9, seed=1, num_steps=3, num_particles=3,
        masks=result.masks.to("cpu"), start=sfpk.StartState(state),
    )  # fmt: skip
    assert abs(second.masks.sparsity() - 0.9) < 0.01


@cuda
def test_bf16_fine_tune_epoch_on_cuda():
    from sfpk.training.optimizers import OptimizerConfig
    from sfpk.training.trainer import Trainer

    model, data = model_and_batches("conv_bn", count=4)
    trainer = Trainer(
        model, OptimizerConfig(), device=torch.device("cuda"), progress=False, precision="bf16"
    )
    result = trainer.train_epoch(data, lr=0.05)
    assert torch.isfinite(torch.tensor(result.loss))
    fp16 = Trainer(
        model, OptimizerConfig(), device=torch.device("cuda"), progress=False, precision="fp16"
    )
    assert torch.isfinite(torch.tensor(fp16.train_epoch(data, lr=0.05).loss))
