"""Every registered method: exact achieved sparsity; baseline scores; BN recalibration."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sfpk
from helpers import MODELS, conv_bn_net, model_and_batches, random_batches, tiny_options
from sfpk.masks.core import Masks, reduce_to_mask
from sfpk.pruners import PruneContext

METHODS = sfpk.methods()
SPARSITY = 0.6


def _floor(sparsity: float, total: int) -> int:
    """floor(sparsity * total) in exact rational arithmetic (independent of the library)."""
    return int(Fraction(str(sparsity)) * total)


def _removed_entries(masks: Masks, name: str) -> int:
    return int((masks[name] == 0).sum())


def _prune(model_name: str, method: str, **kw) -> tuple[nn.Module, Masks]:
    model, data = model_and_batches(model_name)
    masks = sfpk.prune(model, data, method=method, seed=1, **tiny_options(method), **kw)
    return model, masks


def test_all_baselines_are_registered():
    """The five reference baselines must always be available by name."""
    assert {"rand", "mag", "snip", "grasp", "synflow"} <= set(METHODS)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_unstructured_global_removes_exactly_floor_sp(method, model_name):
    """Global unstructured pruning removes exactly floor(s*P) weights, on every model."""
    _, masks = _prune(model_name, method, sparsity=SPARSITY, scope="global")
    total = masks.total_weights()
    assert total - masks.kept_weights() == _floor(SPARSITY, total)
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks.values())


@pytest.mark.parametrize("method", METHODS)
def test_unstructured_local_is_exact_per_layer(method):
    """Local unstructured pruning removes exactly floor(s*numel) from every layer."""
    _, masks = _prune("conv_bn", method, sparsity=SPARSITY, scope="local")
    for name, mask in masks.items():
        assert _removed_entries(masks, name) == _floor(SPARSITY, mask.numel()), name


@pytest.mark.parametrize("structure", ["filter", "channel"])
@pytest.mark.parametrize("method", METHODS)
def test_structured_local_is_exact_per_layer_up_to_one_group(method, structure):
    """Local structured pruning removes floor(s*C) groups per layer: within one group in weights."""
    _, masks = _prune("conv_bn", method, sparsity=SPARSITY, scope="local", structure=structure)
    assert masks.structure == structure
    for name, mask in masks.items():
        assert _removed_entries(masks, name) == _floor(SPARSITY, mask.numel()), name
        total = int(torch.Size(masks.shapes[name]).numel())
        removed = total - masks.kept_weights(name)
        assert abs(removed - _floor(SPARSITY, total)) < masks.weights_per_entry(name), name


@pytest.mark.parametrize("structure", ["filter", "channel"])
@pytest.mark.parametrize("method", METHODS)
def test_structured_global_within_one_group_and_no_layer_cut(method, structure):
    """Global structured pruning stays within one group of the budget and keeps every layer."""
    _, masks = _prune("conv_bn", method, sparsity=SPARSITY, structure=structure)
    total = masks.total_weights()
    budget = _floor(SPARSITY, total)
    largest = max(masks.weights_per_entry(n) for n in masks)
    removed = total - masks.kept_weights()
    assert budget - largest < removed <= budget
    assert all(masks.kept_weights(n) > 0 for n in masks)


@pytest.mark.parametrize("method", METHODS)
def test_structured_masks_zero_whole_groups_when_applied(method):
    """After apply, a pruned filter is zero in every one of its weights and its bias."""
    model, masks = _prune("conv_bn", method, sparsity=0.5, structure="filter", scope="local")
    masks.apply(model)
    dead = masks["3.weight"].reshape(-1) == 0
    assert int(dead.sum()) == 4
    assert model[3].weight.detach()[dead].abs().max().item() == 0.0
    assert model[3].bias.detach()[dead].abs().max().item() == 0.0
    assert (model[3].weight.detach()[~dead].abs().sum(dim=(1, 2, 3)) > 0).all()


def test_mag_scores_are_absolute_weights_summed_per_group():
    """Magnitude scores are |theta|, summed over each filter for structured masks."""
    model = conv_bn_net()
    ctx = PruneContext()
    pruner = sfpk.create_pruner("mag")
    scores = pruner.score(model, [], Masks.ones(model, structure="filter"), ctx)
    expected = model[3].weight.detach().abs().sum(dim=(1, 2, 3)).reshape(8, 1, 1, 1)
    torch.testing.assert_close(scores["3.weight"], expected)
    flat = pruner.score(model, [], Masks.ones(model), ctx)
    assert torch.equal(flat["0.weight"], model[0].weight.detach().abs())


def _manual_snip(model: nn.Module, batches, structure: str) -> dict[str, torch.Tensor]:
    """|sum_b reduce(dL_b/dw * w)| / total, by plain autograd on a copy (train mode)."""
    twin = copy.deepcopy(model).train()
    masks = Masks.ones(twin, structure=structure)
    params = dict(twin.named_parameters())
    total = {n: torch.zeros_like(m) for n, m in masks.items()}
    for x, y in batches:
        twin.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        for n in masks:
            total[n] += reduce_to_mask(params[n].grad * params[n].detach(), masks[n].shape)
    scores = {n: t.abs() for n, t in total.items()}
    norm = sum(s.sum() for s in scores.values())
    return {n: s / norm for n, s in scores.items()}


@pytest.mark.parametrize("structure", ["unstructured", "filter"])
def test_snip_scores_match_manual_mask_gradient(structure):
    """SNIP = |sum over batches of dL/dm| normalised to sum 1 (structured: of the group mask)."""
    model = conv_bn_net()
    batches = random_batches((3, 8, 8), 4, count=3)
    pruner = sfpk.create_pruner("snip", batches=None)
    masks = Masks.ones(model, structure=structure)
    scores = pruner.score(model, batches, masks, PruneContext())
    expected = _manual_snip(model, batches, structure)
    for name in masks:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-7)
    assert sum(s.sum() for s in scores.values()).item() == pytest.approx(1.0, rel=1e-5)


def test_snip_cycles_data_to_read_the_requested_batches():
    """batches=3 on two batches reads b0, b1, b0 (a short loader is cycled, not truncated)."""
    model = conv_bn_net()
    batches = random_batches((3, 8, 8), 4, count=2)
    masks = Masks.ones(model)
    scores = sfpk.create_pruner("snip", batches=3).score(model, batches, masks, PruneContext())
    expected = _manual_snip(model, [batches[0], batches[1], batches[0]], "unstructured")
    torch.testing.assert_close(scores["3.weight"], expected["3.weight"], rtol=1e-4, atol=1e-7)


def test_grasp_scores_are_normalised_by_their_absolute_sum():
    """GraSP scores are divided by |sum S| + 1e-10, so they sum to +-1 when |sum S| >> 1e-10."""
    model = conv_bn_net().double()
    batches = random_batches((3, 8, 8), 4, count=2, dtype=torch.float64)
    # T = 1 keeps |sum S| large; with T = 200 it is ~1e-9 here and the 1e-10 term shows.
    scores = sfpk.create_pruner("grasp", batches=None, temperature=1.0).score(
        model, batches, Masks.ones(model), PruneContext()
    )
    total = sum(s.sum() for s in scores.values()).item()
    assert abs(total) == pytest.approx(1.0, rel=1e-6)
    assert any((s < 0).any() for s in scores.values())  # signed, unlike SNIP


def test_synflow_scores_match_closed_form_on_linear_net():
    """For y = W2 relu(W1 x), SynFlow scores |W1_ij| * sum_k |W2_ki| and |W2_ki| * sum_j |W1_ij|."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    w1, w2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    data = [(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))]
    scores = sfpk.create_pruner("synflow").score(model, data, Masks.ones(model), PruneContext())
    torch.testing.assert_close(scores["0.weight"].float(), w1 * w2.sum(0).reshape(3, 1))
    torch.testing.assert_close(scores["2.weight"].float(), w2 * w1.sum(1).reshape(1, 3))


def test_synflow_uses_only_the_input_shape():
    """SynFlow is data-free: different input values of the same shape give identical scores."""
    model = conv_bn_net()
    a = random_batches((3, 8, 8), 4, count=1, seed=1)
    b = random_batches((3, 8, 8), 4, count=1, seed=2)
    pruner = sfpk.create_pruner("synflow", rounds=1)
    first = pruner.score(model, a, Masks.ones(model), PruneContext())
    second = pruner.score(model, b, Masks.ones(model), PruneContext())
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_synflow_rounds_never_revive_pruned_entries():
    """Starting masks stay pruned through every SynFlow round."""
    model, data = model_and_batches("conv_bn")
    start = sfpk.prune(model, data, method="mag", sparsity=0.3)
    masks = sfpk.prune(model, data, method="synflow", sparsity=0.7, rounds=4, masks=start)
    for name in start:
        assert (masks[name][start[name] == 0] == 0).all(), name
    assert masks.total_weights() - masks.kept_weights() == _floor(0.7, masks.total_weights())


def test_synflow_rounds_read_the_data_once():
    """Only the input shape is needed, so 4 rounds must not open 4 (costly) loader passes."""
    model = conv_bn_net()
    data = _FreshFirstBatch(random_batches((3, 8, 8), 4, count=2))
    sfpk.prune(model, data, method="synflow", sparsity=0.7, rounds=4)
    assert data.passes == 1


def test_grasp_rejects_data_that_cannot_be_read_twice():
    """A one-shot iterator leaves GraSP's second pass empty: error, not all-zero scores."""
    model, data = model_and_batches("conv_bn")
    with pytest.raises(sfpk.SfpkError, match="passes gave 2 and 0 batches"):
        sfpk.prune(model, iter(data[:2]), method="grasp", sparsity=0.5, batches=None)


# -- BatchNorm recalibration ------------------------------------------------------------


class _FreshFirstBatch:
    """A re-iterable whose every new pass starts with the next batch (like a shuffled loader)."""

    def __init__(self, batches) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self):
        first = self.batches[self.passes % len(self.batches)]
        self.passes += 1
        yield first


def _bn_inputs(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The tensors entering each BN layer in a train-mode forward of a copy."""
    twin = copy.deepcopy(model).train()
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        for m in twin.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        twin(inputs)
    for h in hooks:
        h.remove()
    return seen


def test_recalibrate_bn_equals_cumulative_average_over_batches():
    """Running stats become the plain average of the batch statistics (momentum None)."""
    model = conv_bn_net()
    with torch.no_grad():
        for m in (model[1], model[4]):
            m.running_mean.fill_(7.0)
            m.running_var.fill_(9.0)
    batches = random_batches((3, 8, 8), 4, count=3, batch_size=6)
    data = _FreshFirstBatch(batches)
    sfpk.recalibrate_bn(model, data, batches=3)
    assert data.passes == 3
    per_batch = [_bn_inputs(model, x) for x, _ in batches]
    for layer, bn in enumerate((model[1], model[4])):
        xs = [inputs[layer] for inputs in per_batch]
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert bn.num_batches_tracked.item() == 3


def test_recalibrate_bn_restores_momentum_and_mode():
    """After recalibration the caller's BN momenta and eval mode are back."""
    model = conv_bn_net().eval()
    model[4].momentum = 0.3
    sfpk.recalibrate_bn(model, random_batches((3, 8, 8), 4, count=1), batches=2)
    assert (model[1].momentum, model[4].momentum) == (0.1, 0.3)
    assert not any(m.training for m in model.modules())


def test_recalibrate_bn_without_bn_reads_no_data():
    """A model without BatchNorm is untouched and the data is never iterated."""

    class Exploding:
        def __iter__(self):
            raise AssertionError("data was read")

    model = MODELS["mlp"][0]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sfpk.recalibrate_bn(model, Exploding(), batches=2) is model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_snip_on_empty_data_names_the_cause():
    """No batch at all is reported as such, not as NaN gradients."""
    model, _ = model_and_batches("mlp")
    with pytest.raises(sfpk.SfpkError, match="no batch"):
        sfpk.prune(model, [], method="snip", sparsity=0.5, batches=None)
