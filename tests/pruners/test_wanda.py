"""Wanda: |W| times input-feature norms, per-row comparison, conv groups, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from helpers import model_and_batches
from sfpk.errors import ConfigError, SfpkError
from sfpk.masks.core import Masks
from sfpk.pruners import PruneContext


def _two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_scores_match_the_formula_by_hand():
    """score(W_ij) = |W_ij| * sqrt(sum over tokens of x_j^2), for every layer's own input."""
    model = _two_layers()
    x1, x2 = torch.randn(5, 4), torch.randn(3, 4)
    data = [(x1, torch.zeros(5, dtype=torch.long)), (x2, torch.zeros(3, dtype=torch.long))]
    pruner = sfpk.create_pruner("wanda")
    scores = pruner.score(model, data, Masks.ones(model), PruneContext())
    inputs = torch.cat([x1, x2]).double()
    hidden = torch.relu(inputs @ model[0].weight.double().T + model[0].bias.double())
    for layer, x in ((model[0], inputs), (model[2], hidden)):
        norm = x.pow(2).sum(0).sqrt()
        expected = layer.weight.detach().double().abs() * norm[None, :]
        name = "0.weight" if layer is model[0] else "2.weight"
        assert torch.allclose(scores[name], expected, rtol=1e-12), name


def test_default_compares_within_each_output_row():
    """Each output row keeps exactly its share, as the paper's per-output comparison."""
    model, data = model_and_batches("mlp", count=2)
    masks = sfpk.prune(model, data, method="wanda", sparsity=0.5)
    assert masks.scope == "row"
    for name, mask in masks.items():
        rows = mask.reshape(mask.shape[0], -1)
        assert bool((rows.sum(1) == rows.shape[1] - rows.shape[1] // 2).all()), name


def test_global_scope_is_available_and_exact():
    """scope='global' pools every layer's scores into one exact cut."""
    model, data = model_and_batches("conv_bn", count=2)
    masks = sfpk.prune(model, data, method="wanda", sparsity=0.8, scope="global")
    assert masks.total_weights() - masks.kept_weights() == int(0.8 * masks.total_weights())


def test_pruned_inputs_are_measured_on_the_masked_network():
    """Calibration runs the masked model: a zeroed first layer gives the next layer 0 input."""
    model = _two_layers()
    data = [(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))]
    masks = Masks.ones(model)
    zero_first = masks.with_tensors({"0.weight": torch.zeros(3, 4), "2.weight": torch.ones(2, 3)})
    with torch.no_grad():
        model[0].bias.fill_(-1.0)  # relu(0 * x - 1) = 0: the second layer sees zeros
    scores = sfpk.create_pruner("wanda").score(model, data, zero_first, PruneContext())
    assert torch.count_nonzero(scores["2.weight"]) == 0


def test_grouped_conv_uses_each_outputs_own_input_channels():
    """Depthwise conv: filter o only sees input channel o, so its factor is that norm."""
    conv = nn.Conv2d(3, 3, 3, groups=3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(2, 3, 4, 4) * torch.tensor([1.0, 10.0, 100.0])[None, :, None, None]
    scores = sfpk.create_pruner("wanda").score(
        model, [(x, torch.zeros(2, dtype=torch.long))], Masks.ones(model), PruneContext()
    )
    norms = x.double().pow(2).sum((0, 2, 3)).sqrt()
    expected = conv.weight.detach().double().abs() * norms[:, None, None, None]
    assert torch.allclose(scores["0.weight"], expected, rtol=1e-12)


def test_structured_masks_sum_the_scores_of_each_group():
    """Filter masks rank whole output rows by their summed Wanda score (globally)."""
    model, data = model_and_batches("mlp", count=2)
    masks = sfpk.prune(model, data, method="wanda", sparsity=0.5, structure="filter")
    assert masks.scope == "global" and masks.structure == "filter"


def test_row_scope_is_refused_for_structured_masks():
    """A filter mask has one entry per row: 'row' would keep every filter, so it is an error."""
    model, data = model_and_batches("mlp", count=2)
    with pytest.raises(ConfigError, match="row"):
        sfpk.prune(model, data, method="wanda", sparsity=0.5, structure="filter", scope="row")


def test_parameters_of_other_layers_are_refused():
    """Wanda needs a layer input; an embedding table has none, so it is named in the error."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    data = [(torch.randint(0, 10, (3, 2)), torch.zeros(3, dtype=torch.long))]
    with pytest.raises(ConfigError, match="0.weight"):
        sfpk.prune(model, data, method="wanda", sparsity=0.5, include=["0.weight", "2.weight"])


def test_empty_calibration_data_is_an_error():
    """No batch means no norms: a clear error, not an all-zero score."""
    model = _two_layers()
    with pytest.raises(SfpkError, match="no batch"):
        sfpk.prune(model, [], method="wanda", sparsity=0.5)
