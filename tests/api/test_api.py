"""sfpk.prune: determinism, no side effects on the model or RNG, options, any standard model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sfpk
from helpers import (
    MODELS,
    assert_same_state,
    conv_bn_net,
    mlp,
    model_and_batches,
    nested_net,
    snapshot,
    tiny_options,
)
from sfpk.masks.core import Masks


@pytest.mark.parametrize("method", ["rand", "snip"])
def test_same_seed_gives_identical_masks(method):
    """Reruns with one seed must give byte-identical masks (reproducible experiments)."""
    model, data = model_and_batches("conv_bn")
    first = sfpk.prune(model, data, method=method, sparsity=0.7, seed=5)
    second = sfpk.prune(model, data, method=method, sparsity=0.7, seed=5)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_different_seed_gives_different_random_masks():
    """The seed really drives random pruning."""
    model, data = model_and_batches("conv_bn")
    first = sfpk.prune(model, data, method="rand", sparsity=0.7, seed=1)
    second = sfpk.prune(model, data, method="rand", sparsity=0.7, seed=2)
    assert any(not torch.equal(first[n], second[n]) for n in first)


@pytest.mark.parametrize("method", sfpk.methods())
def test_prune_leaves_global_rng_state_alone(method):
    """Pruning must not shift the caller's random stream (e.g. the next shuffle)."""
    model, data = model_and_batches("conv_bn")
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    sfpk.prune(model, data, method=method, sparsity=0.5, **tiny_options(method))
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("method", sfpk.methods())
def test_prune_does_not_modify_model(method, training):
    """Weights, BN buffers, train/eval mode and requires_grad survive pruning unchanged."""
    model, data = model_and_batches("conv_bn")
    model.train(training)
    model[1].train(not training)  # a mixed-mode model must come back mixed
    model[0].bias.requires_grad_(False)
    model[3].weight.requires_grad_(False)  # a frozen prunable weight is still scored
    before = snapshot(model)
    sfpk.prune(model, data, method=method, sparsity=0.5, **tiny_options(method))
    assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_result_records_method_target_scope_structure():
    """The returned masks carry their provenance (used in file headers and reports)."""
    model, data = model_and_batches("conv_bn")
    masks = sfpk.prune(model, data, method="Mag", sparsity=0.4, scope="local", structure="channel")
    assert (masks.method, masks.target_sparsity) == ("mag", 0.4)
    assert (masks.scope, masks.structure) == ("local", "channel")


def test_starting_masks_stay_pruned():
    """Iterative pruning: entries pruned in the given masks stay pruned at the higher target."""
    model, data = model_and_batches("conv_bn")
    start = sfpk.prune(model, data, method="rand", sparsity=0.4, seed=3)
    masks = sfpk.prune(model, data, method="snip", sparsity=0.8, masks=start)
    for name in start:
        assert (masks[name][start[name] == 0] == 0).all(), name
    assert masks.total_weights() - masks.kept_weights() == int(0.8 * masks.total_weights())


def test_structure_conflicting_with_starting_masks_is_an_error():
    """Asking for filter pruning from unstructured masks must not silently prune unstructured."""
    model, data = model_and_batches("conv_bn")
    start = sfpk.prune(model, data, method="mag", sparsity=0.3)
    with pytest.raises(sfpk.ConfigError, match="structure='filter'"):
        sfpk.prune(model, data, method="mag", sparsity=0.6, structure="filter", masks=start)


def test_custom_loss_fn_is_used():
    """loss_fn replaces cross-entropy for data-driven scores: once per batch read, after
    one call without gradients, the check of the first batch."""
    model, data = model_and_batches("mlp")
    calls = []

    def loss(logits, targets):
        calls.append((logits.shape[0], torch.is_grad_enabled()))
        return F.cross_entropy(logits, targets)

    sfpk.prune(model, data, method="snip", sparsity=0.5, loss_fn=loss, batches=2)
    assert calls == [(8, False), (8, True), (8, True)]


def test_custom_prunable_set_with_include_exclude():
    """include/exclude choose exactly which tensors get masks."""
    model, data = model_and_batches("nested")
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, include=["features.*.weight"])
    assert list(masks) == ["features.a.0.weight", "features.b.0.0.weight"]
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, exclude=["classifier.weight"])
    assert list(masks) == ["features.a.0.weight", "features.b.0.0.weight"]


def test_include_bias_prunes_linear_biases():
    """include_bias=True makes linear biases compete in the global ranking, as in the reference."""
    model, data = model_and_batches("mlp")
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, include_bias=True)
    assert list(masks) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert masks.total_weights() == 120 + 10 + 80 + 8 + 24 + 3
    assert masks.total_weights() - masks.kept_weights() == 245 // 2
    assert masks["0.bias"].shape == (10,)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
def test_works_on_any_standard_model(model_name, structure):
    """Conv1d, residual and nested models prune and apply without special casing."""
    model, data = model_and_batches(model_name)
    masks = sfpk.prune(model, data, method="snip", sparsity=0.5, structure=structure, batches=1)
    masks.apply(model)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert params[name].detach()[(mask == 0).expand_as(params[name])].abs().sum() == 0
    out = model(data[0][0])
    assert out.shape == (8, MODELS[model_name][2]) and torch.isfinite(out).all()


def test_data_free_methods_accept_no_data():
    """rand and mag need no batch at all (data=None)."""
    for method in ("rand", "mag"):
        masks = sfpk.prune(mlp(), None, method=method, sparsity=0.5)
        assert masks.total_weights() - masks.kept_weights() == 224 // 2


def test_prune_is_case_insensitive_and_returns_checked_binary_masks():
    """Method names ignore case; masks are 0/1 in the parameter dtype."""
    model = conv_bn_net().double()
    masks = sfpk.prune(model, None, method="MAG", sparsity=0.5)
    assert masks.method == "mag"
    for mask in masks.values():
        assert mask.dtype == torch.float64
        assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_masks_from_prune_fit_a_fresh_copy_of_the_architecture():
    """Masks depend on names and shapes only, so they fit another instance of the model."""
    masks = sfpk.prune(nested_net(seed=1), None, method="mag", sparsity=0.3)
    other = nested_net(seed=2)
    masks.check_fits(other)
    assert list(masks) == list(Masks.ones(other))
