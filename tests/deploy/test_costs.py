"""Parameter and MAC counts, checked by hand on a tiny conv + depthwise conv + linear model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sfpk
from sfpk.deploy.costs import cost_summary, count
from sfpk.errors import MaskMismatchError
from sfpk.masks.core import Masks

INPUT = (2, 5, 5)


def _tiny() -> nn.Module:
    """conv 2->4 3x3 pad 1 (5x5 out), depthwise 3x3 stride 2 (2x2 out), linear 16->3."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 72 weights + 4 biases, 25 positions: 1800 MACs
        nn.BatchNorm2d(4),  # 8 parameters, no MACs counted
        nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False),  # 36 weights, 4 positions: 144
        nn.Flatten(),
        nn.Linear(16, 3),  # 48 weights + 3 biases, 1 position: 48 MACs
    )
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)  # no accidental zeros: every count below is exact
    return model


def _masks(model: nn.Module) -> Masks:
    """Keep 18 of 72, 9 of 36 and 10 of 48 weights."""
    ones = Masks.ones(model)
    kept = {"0.weight": 18, "2.weight": 9, "4.weight": 10}
    tensors = {}
    for name, mask in ones.items():
        flat = torch.zeros(mask.numel())
        flat[: kept[name]] = 1.0
        tensors[name] = flat.reshape(mask.shape)
    return ones.with_tensors(tensors)


def test_dense_counts_by_hand():
    """MACs = output positions x weights, per conv/linear layer; grouped convs count C_in/g."""
    costs = count(_tiny(), INPUT)
    assert costs.params == 76 + 8 + 36 + 51
    assert costs.nonzero_params == costs.params
    assert costs.macs == 25 * 72 + 4 * 36 + 1 * 48 == 1992
    assert costs.nonzero_macs == costs.macs
    assert costs.mac_density == 1.0 and costs.mac_reduction == 1.0


def test_masked_counts_leave_out_pruned_weights():
    """A pruned weight's MACs (one per output position) and the weight itself drop out."""
    model = _tiny()
    costs = count(model, INPUT, _masks(model))
    assert costs.nonzero_params == 18 + 4 + 8 + 9 + 10 + 3
    assert costs.nonzero_macs == 25 * 18 + 4 * 9 + 1 * 10 == 496
    assert costs.mac_density == pytest.approx(496 / 1992)
    assert costs.param_density == pytest.approx(52 / 171)


def test_baked_model_without_masks_counts_its_zeros():
    """With masks=None the model's own zero weights are what is left out."""
    model = _tiny()
    masks = _masks(model)
    masked = count(model, INPUT, masks)
    masks.apply(model)
    assert count(model, INPUT) == masked


def test_counting_changes_nothing():
    """No weight, buffer or train/eval flag of the model is changed by counting."""
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count(model, INPUT, _masks(model))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model[0]._forward_hooks


class _Shared(nn.Module):
    """A linear layer used twice per forward, on a [B, T, F] sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


def test_shared_layers_and_sequences_count_every_position():
    """A linear on [1, T, F] does T positions; a layer called twice counts twice."""
    costs = count(_Shared(), (7, 4))
    assert costs.macs == 2 * 7 * 16


def test_cost_summary_is_json_ready():
    """The summary.json figures: counts and ratios, all JSON numbers."""
    model = _tiny()
    summary = cost_summary(model, _masks(model), INPUT)
    assert set(summary) == {
        "params",
        "nonzero_params",
        "macs",
        "nonzero_macs",
        "param_density",
        "mac_density",
        "mac_reduction",
    }
    assert json.loads(json.dumps(summary)) == summary
    assert summary["mac_reduction"] == pytest.approx(1992 / 496)


def test_masks_of_another_model_are_refused():
    """Counting with masks that do not fit the model is a MaskMismatchError."""
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(MaskMismatchError):
        count(_tiny(), INPUT, Masks.ones(other))


def test_count_is_public():
    """sfpk.count is the documented entry point."""
    assert sfpk.count is count


def test_token_models_are_counted_with_integer_inputs():
    """A language model takes token ids: the dummy input must be integer, not float."""
    from torch import nn

    from sfpk.deploy.costs import count

    model = nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 11))
    costs = count(model, (5,), input_dtype=torch.long)
    assert costs.macs == 5 * 4 * 11  # one MAC per weight per token position
    assert costs.params == 11 * 4 + 4 * 11 + 11  # every parameter: embedding, weight, bias


def test_slim_counts_of_a_filter_pruned_cnn_by_hand():
    """Slim MACs drop for the next layer's inputs too, which nonzero MACs cannot see."""
    pytest.importorskip("torch_pruning", reason="the slim extra is not installed")
    from sfpk.deploy.costs import slim_cost_summary

    torch.manual_seed(0)
    model = sfpk.models.create("cnn_digits", num_classes=10, input_shape=(1, 8, 8), width=8)
    masks = Masks.ones(model, structure="filter")
    tensors = dict(masks.items())
    tensors["features.0.weight"][:3] = 0  # 8 -> 5 channels
    tensors["features.3.weight"][:6] = 0  # 16 -> 10
    tensors["features.7.weight"][:4] = 0  # 16 -> 12
    masks = masks.with_tensors(tensors)
    a, b, c = 5, 10, 12  # conv widths; 8x8 positions, then 4x4 after the max-pool
    macs = 64 * 9 * (1 * a + a * b) + 16 * 9 * b * c + c * 10
    params = 9 * (a + a * b + b * c) + 2 * (a + b + c) + 10 * c + 10
    slim = slim_cost_summary(model, masks, (1, 8, 8))
    assert slim == {"slim_params": params, "slim_macs": macs}
    assert slim["slim_macs"] < count(model, (1, 8, 8), masks).nonzero_macs


def test_slim_counts_are_none_for_unstructured_masks():
    """Nothing to slim: the figures are None (JSON null), not the dense counts."""
    from sfpk.deploy.costs import slim_cost_summary

    model = _tiny()
    assert slim_cost_summary(model, _masks(model), INPUT) == {
        "slim_params": None,
        "slim_macs": None,
    }
