"""Batched particles: one vmapped forward+backward for all n particles equals the loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import sfpk
from sfpk.errors import ConfigError
from sfpk.models import create
from sfpk.pruners.particles.batching import particle_grads, resolve_batching
from sfpk.training.precision import autocast

CPU = torch.device("cpu")

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


# bf16 + vmap. The vmapped pass and the loop round at different places (vmap's batching rules
# split ops differently, and the vmapped normalisations run in fp32), so in bf16 they agree
# to rounding, not bitwise: two bf16 approximations of the same fp32 result. The yardstick
# is the loop's own bf16 error against fp32; the vmapped pass must be about as accurate
# (measured: 0.6 to 1.1 times the loop's error; a wrong normalisation is off by O(1)).
_VMAP_BF16_ERROR_SLACK = 1.5

_NORMS: dict[str, Callable[[], nn.Module]] = {
    "batchnorm": lambda: nn.BatchNorm1d(8),
    "batchnorm_eval": lambda: nn.BatchNorm1d(8).eval(),
    "instancenorm": lambda: nn.InstanceNorm1d(8, affine=True),
    "layernorm": lambda: nn.LayerNorm((8, 10)),
    "groupnorm": lambda: nn.GroupNorm(2, 8),
    "rmsnorm": lambda: nn.RMSNorm(10),
}


def _relative_gap(
    grads: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    reference: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> float:
    """||g - g_ref|| / ||g_ref|| over every particle's gradients."""
    diff = sum(
        float((g[n] - r[n]).square().sum())
        for (_, g), (_, r) in zip(grads, reference, strict=True)
        for n in r
    )
    norm = sum(float(r[n].square().sum()) for _, r in reference for n in r)
    return math.sqrt(diff / norm)


def _kept_agreement(a: sfpk.Masks, b: sfpk.Masks) -> float:
    """The fraction of ``a``'s kept entries that ``b`` keeps too."""
    kept = sum(int((a[n] != 0).sum()) for n in a)
    return sum(int(((a[n] != 0) & (b[n] != 0)).sum()) for n in a) / kept


# torch's unbatched RMSNorm warns that a bf16 input with an fp32 weight misses its fused kernel.
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("norm", sorted(_NORMS))
def test_vmapped_bf16_gradients_match_the_loop_through_every_norm_layer(norm):
    """Under bf16 autocast the vmapped pass runs (torch's batching rules for batch, instance
    and layer norm stop on a bf16 input with fp32 statistics) and its gradients are as close
    to the fp32 ones as the bf16 loop's are."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1), _NORMS[norm](), nn.ReLU(), nn.Flatten(), nn.Linear(80, 10)
    )
    gen = torch.Generator().manual_seed(1)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    effective = [
        {n: w.detach() * (torch.rand(w.shape, generator=gen) > 0.3) for n, w in weights.items()}
        for _ in range(3)
    ]
    batches = [
        (torch.randn(16, 4, 10, generator=gen), torch.randint(0, 10, (16,), generator=gen))
        for _ in range(3)
    ]

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets)

    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {}
    for precision, batching in (("fp32", "loop"), ("bf16", "loop"), ("bf16", "vmap")):
        model.load_state_dict(state)  # the loop moves the running statistics
        with autocast(CPU, precision):
            runs[precision, batching] = particle_grads(model, effective, batches, loss, batching)
    bf16_error = _relative_gap(runs["bf16", "loop"], runs["fp32", "loop"])
    assert bf16_error > 1e-4  # bf16 really ran: otherwise the comparison below proves nothing
    vmap_error = _relative_gap(runs["bf16", "vmap"], runs["fp32", "loop"])
    assert vmap_error < _VMAP_BF16_ERROR_SLACK * bf16_error
    for (loss_vmap, grads), (loss_loop, _) in zip(
        runs["bf16", "vmap"], runs["bf16", "loop"], strict=True
    ):
        assert loss_vmap == pytest.approx(float(loss_loop), rel=2**-6)
        assert all(g.dtype == torch.float32 for g in grads.values())


@pytest.mark.parametrize(
    ("model_name", "shape"), [("cnn1d", (40,)), ("vit_tiny", (1, 8, 8))], ids=["bn", "vit"]
)
def test_sfpk_vmap_in_bf16_prunes_exactly_and_as_faithfully_as_the_loop(model_name, shape):
    """bf16 + vmap on a BatchNorm CNN and on a LayerNorm transformer: exact sparsity, fp32
    masks, as close to the fp32 masks as the bf16 loop's, and no further from the loop's
    than bf16 is from fp32 (the particle dynamics amplify rounding: bf16 runs differ from
    fp32, and from each other, by up to ~20 % of the kept entries here, and these
    agreements stay within 0.04 of each other)."""
    torch.manual_seed(0)
    model = create(model_name, num_classes=10, input_shape=shape)
    gen = torch.Generator().manual_seed(3)
    data = [
        (torch.randn(16, *shape, generator=gen), torch.randint(0, 10, (16,), generator=gen))
        for _ in range(6)
    ]
    runs = {
        (precision, batching): sfpk.run_pruner(
            model,
            data,
            method="sfpk",
            sparsity=0.8,
            seed=2,
            num_steps=4,
            num_particles=3,
            precision=precision,
            particle_batching=batching,
        )
        for precision, batching in (("fp32", "loop"), ("bf16", "loop"), ("bf16", "vmap"))
    }
    fp32, loop, vmap = (runs[key].masks for key in runs)
    total = vmap.total_weights()
    assert total - vmap.kept_weights() == math.floor(0.8 * total)
    assert all(vmap[n].dtype == torch.float32 for n in vmap)
    bf16_agreement = _kept_agreement(fp32, loop)
    assert _kept_agreement(fp32, vmap) >= bf16_agreement - 0.05
    assert _kept_agreement(loop, vmap) >= bf16_agreement - 0.05
    # The first step starts both from the same particles: its energies differ by rounding.
    first_loop, first_vmap = runs["bf16", "loop"].history[0], runs["bf16", "vmap"].history[0]
    assert first_vmap["loss"] == pytest.approx(first_loop["loss"], rel=2**-7)
    assert len(runs["bf16", "vmap"].history) == 4
