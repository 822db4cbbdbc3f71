"""Masks: prunable set, shapes, counting, apply, gradient masking, tied biases and files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sfpk
from helpers import conv1d_net, conv_bn_net, mlp, nested_net, random_batches
from sfpk.masks.core import Masks, reduce_to_mask
from sfpk.masks.prunable import mask_shape, prunable_parameters


def _random_masks(model: nn.Module, structure: str = "unstructured", seed: int = 0) -> Masks:
    """0/1 masks with about half the entries kept (every tensor keeps at least one)."""
    masks = Masks.ones(model, structure=structure)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, m in masks.items():
        t = (torch.rand(m.shape, generator=gen) < 0.5).to(m.dtype)
        t.reshape(-1)[0] = 1.0
        tensors[name] = t
    return masks.with_tensors(tensors)


def test_default_prunable_set_is_conv_and_linear_weights():
    """Only conv/linear weights are pruned by default: no biases, no BatchNorm."""
    names = list(prunable_parameters(conv_bn_net()))
    assert names == ["0.weight", "3.weight", "8.weight"]


def test_include_bias_adds_linear_biases_only():
    """include_bias mirrors the reference: linear biases are prunable, conv biases are not."""
    names = list(prunable_parameters(conv_bn_net(), include_bias=True))
    assert names == ["0.weight", "3.weight", "8.weight", "8.bias"]


def test_prunable_set_covers_conv1d_and_nested_modules():
    """Any standard conv/linear layer is found, whatever the container nesting."""
    assert list(prunable_parameters(conv1d_net())) == ["0.weight", "3.weight", "6.weight"]
    assert list(prunable_parameters(nested_net())) == [
        "features.a.0.weight",
        "features.b.0.0.weight",
        "classifier.weight",
    ]


def test_include_and_exclude_patterns_select_parameters():
    """Glob patterns replace (include) or trim (exclude) the default prunable set."""
    model = nested_net()
    assert list(prunable_parameters(model, include=["features.*"])) == [
        "features.a.0.weight",
        "features.a.0.bias",
        "features.b.0.0.weight",
        "features.b.0.0.bias",
    ]
    assert list(prunable_parameters(model, exclude=["classifier.*"])) == [
        "features.a.0.weight",
        "features.b.0.0.weight",
    ]


@pytest.mark.parametrize(
    ("name", "shape", "structure", "expected"),
    [
        ("0.weight", (6, 3, 3, 3), "unstructured", (6, 3, 3, 3)),
        ("0.weight", (6, 3, 3, 3), "filter", (6, 1, 1, 1)),
        ("0.weight", (6, 3, 3, 3), "channel", (1, 3, 1, 1)),
        ("fc.weight", (4, 8), "filter", (4, 1)),
        ("fc.weight", (4, 8), "channel", (1, 8)),
        ("c.weight", (5, 2, 3), "channel", (1, 2, 1)),
        ("fc.bias", (4,), "filter", (4,)),
    ],
)
def test_mask_shape_broadcasts_against_parameter(name, shape, structure, expected):
    """Mask shapes decide which weights a mask entry controls; biases stay element-wise."""
    assert mask_shape(name, shape, structure) == expected
    assert torch.broadcast_shapes(expected, shape) == shape


def test_reduce_to_mask_sums_over_group():
    """Structured scores are the sum of the element scores of each group."""
    score = torch.arange(24.0).reshape(2, 3, 4)
    assert reduce_to_mask(score, (2, 1, 1)).reshape(-1).tolist() == [66.0, 210.0]
    assert reduce_to_mask(score, (1, 3, 1)).reshape(-1).tolist() == [60.0, 92.0, 124.0]
    assert torch.equal(reduce_to_mask(score, (2, 3, 4)), score)


def test_structured_counting_is_in_weights():
    """Sparsity counts weights, so one filter entry of a 3x3 conv with 3 inputs is 27 weights."""
    model = conv_bn_net()
    masks = Masks.ones(model, structure="filter")
    assert masks.weights_per_entry("0.weight") == 27
    assert masks.total_weights() == 6 * 27 + 8 * 54 + 4 * 8
    pruned = dict(masks.items())
    pruned["0.weight"] = torch.tensor([0.0, 1, 1, 0, 1, 1]).reshape(6, 1, 1, 1)
    pruned = masks.with_tensors(pruned)
    assert pruned.kept_weights("0.weight") == 4 * 27
    assert pruned.kept_weights() == masks.total_weights() - 54
    assert pruned.sparsity() == pytest.approx(54 / masks.total_weights())
    report = {row["name"]: row for row in pruned.layer_report()}
    assert report["0.weight"]["kept"] == 108
    assert report["0.weight"]["sparsity"] == pytest.approx(1 / 3)


def test_filter_masks_tie_biases_of_the_same_layer():
    """A filter mask must also govern its layer's bias; unstructured masks need not."""
    model = conv_bn_net()
    assert Masks.ones(model, structure="filter").tied_biases == {
        "0.bias": "0.weight",
        "3.bias": "3.weight",
        "8.bias": "8.weight",
    }
    assert Masks.ones(model).tied_biases == {}
    assert Masks.ones(model, structure="channel").tied_biases == {}


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
def test_apply_zeros_exactly_the_masked_weights(structure):
    """apply bakes zeros into pruned weights and leaves kept weights untouched."""
    model = conv_bn_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = _random_masks(model, structure)
    masks.apply(model)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        expected = before[name] * (mask != 0)
        assert torch.equal(params[name].detach(), expected), name
    assert torch.equal(params["1.weight"], before["1.weight"])  # BN untouched


def test_filter_mask_silences_pruned_filter_output_before_bn():
    """A pruned filter's conv output is exactly zero: its bias is zeroed too."""
    model = conv_bn_net()
    masks = Masks.ones(model, structure="filter")
    tensors = dict(masks.items())
    tensors["0.weight"] = torch.tensor([1.0, 0, 1, 1, 0, 1]).reshape(6, 1, 1, 1)
    masks.with_tensors(tensors).apply(model)
    assert model[0].bias[1].item() == 0.0 and model[0].bias[4].item() == 0.0
    assert model[0].bias[0].item() != 0.0
    out = model[0](random_batches((3, 8, 8), 4, count=1)[0][0])
    assert out[:, [1, 4]].abs().max().item() == 0.0
    assert (out[:, [0, 2, 3, 5]].abs().sum(dim=(0, 2, 3)) > 0).all()


def test_mask_gradients_zeros_pruned_entries_only():
    """Pruned entries get zero gradient; kept entries keep theirs unchanged."""
    model = mlp()
    masks = _random_masks(model)
    x, y = random_batches((12,), 3, count=1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    masks.mask_gradients_(model)
    for name, p in model.named_parameters():
        expected = grads[name] * (masks[name] != 0) if name in masks else grads[name]
        assert torch.equal(p.grad, expected), name


def test_mask_gradients_zeros_tied_bias_gradients():
    """With filter masks, the bias gradient of a pruned filter is zeroed as well."""
    model = mlp()
    masks = Masks.ones(model, structure="filter")
    tensors = dict(masks.items())
    tensors["0.weight"] = torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1, 1, 0]).reshape(10, 1)
    masks = masks.with_tensors(tensors)
    x, y = random_batches((12,), 3, count=1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    masks.mask_gradients_(model)
    assert model[0].bias.grad[[0, 9]].tolist() == [0.0, 0.0]
    assert model[0].bias.grad[1:9].abs().sum().item() > 0


def _sgd_steps(model: nn.Module, masks: Masks, mask_grads: bool, steps: int = 4) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in random_batches((3, 8, 8), 4, count=steps, seed=3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if mask_grads:
            masks.mask_gradients_(model)
        opt.step()
        if mask_grads:
            masks.reapply_(model)


@pytest.mark.parametrize("structure", ["unstructured", "filter"])
def test_pruned_weights_stay_zero_under_sgd_with_masked_gradients(structure):
    """Fine-tuning with momentum and weight decay must not regrow pruned weights."""
    model = conv_bn_net()
    masks = _random_masks(model, structure)
    masks.apply(model)
    _sgd_steps(model, masks, mask_grads=True)
    params = dict(model.named_parameters())
    for name, mask in masks.effective_masks().items():
        dead = (mask == 0).expand_as(params[name])
        assert params[name].detach()[dead].abs().max().item() == 0.0, name
        assert params[name].detach()[~dead].abs().sum().item() > 0


def test_pruned_weights_regrow_without_gradient_masking():
    """Control for the test above: without masking, pruned weights do change."""
    model = conv_bn_net()
    masks = _random_masks(model)
    masks.apply(model)
    _sgd_steps(model, masks, mask_grads=False)
    dead = masks["3.weight"] == 0
    assert model[3].weight.detach()[dead].abs().max().item() > 0


def test_binary_and_to_convert_masks():
    """binary() turns continuous masks into 0/1; to() changes dtype but not values."""
    model = mlp()
    masks = Masks.ones(model)
    soft = masks.with_tensors({n: torch.full_like(m, 0.3) for n, m in masks.items()})
    soft = soft.with_tensors({**soft, "0.weight": torch.zeros_like(masks["0.weight"])})
    hard = soft.binary()
    assert hard["2.weight"].unique().tolist() == [1.0]
    assert hard["0.weight"].unique().tolist() == [0.0]
    double = hard.to(dtype=torch.float64)
    assert double["2.weight"].dtype == torch.float64
    assert torch.equal(double["0.weight"].float(), hard["0.weight"])


def test_wrong_mask_shape_is_rejected():
    """A mask that does not broadcast as its structure says is refused at construction."""
    with pytest.raises(sfpk.MaskMismatchError, match="expected"):
        Masks({"w.weight": torch.ones(3, 4)}, shapes={"w.weight": (3, 4)}, structure="filter")


def test_check_fits_names_missing_and_misshaped_parameters():
    """Using masks with another model must fail with the offending parameter's name."""
    masks = Masks.ones(mlp())
    with pytest.raises(sfpk.MaskMismatchError, match="0.weight"):
        masks.check_fits(nested_net())
    other = nn.Sequential(
        nn.Linear(12, 11), nn.ReLU(), nn.Linear(11, 8), nn.ReLU(), nn.Linear(8, 3)
    )
    with pytest.raises(sfpk.MaskMismatchError, match="2.weight"):
        masks.check_fits(other)


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
def test_save_load_round_trip(tmp_path, structure):
    """Saved masks load back with identical tensors, structure, method and sparsity."""
    model, data = conv_bn_net(), random_batches((3, 8, 8), 4)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, structure=structure)
    path = masks.save(tmp_path / "sub" / "masks.safetensors")
    loaded = sfpk.load_masks(path, model)
    assert list(loaded) == list(masks)
    for name in masks:
        assert torch.equal(loaded[name], masks[name]), name
    assert loaded.shapes == masks.shapes
    assert loaded.tied_biases == masks.tied_biases
    assert (loaded.structure, loaded.method, loaded.scope) == (structure, "mag", "global")
    assert loaded.target_sparsity == 0.5
    assert loaded.sparsity() == masks.sparsity()
    assert not (tmp_path / "sub" / "masks.safetensors.tmp").exists()


def test_loaded_masks_keep_model_order_not_file_order(tmp_path):
    """Mask order decides tie-breaking and flat layouts, so a resumed run must not reorder."""
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(conv=nn.Linear(4, 3), fc=nn.Linear(3, 2), act=nn.ReLU()))
    model.add_module("b_head", nn.Linear(2, 2))  # model order conv, fc, b_head; sorted differs
    masks = Masks.ones(model)
    loaded = sfpk.load_masks(masks.save(tmp_path / "m.safetensors"), model)
    assert list(loaded) == ["conv.weight", "fc.weight", "b_head.weight"]


def test_saved_header_fields(tmp_path):
    """The JSON header lets tools read provenance without torch."""
    from safetensors import safe_open

    masks = sfpk.prune(mlp(), None, method="mag", sparsity=0.25, scope="local")
    path = masks.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sfpk"])
    assert header["format"] == "sfpk-masks"
    assert header["version"] == 1
    assert header["method"] == "mag"
    assert header["target_sparsity"] == 0.25
    assert header["achieved_sparsity"] == pytest.approx(masks.sparsity())
    assert (header["structure"], header["scope"]) == ("unstructured", "local")
    assert header["shapes"] == {"0.weight": [10, 12], "2.weight": [8, 10], "4.weight": [3, 8]}


def test_check_fits_names_a_missing_tied_bias():
    """Filter masks tie the layer's bias; a model without that bias is a clear mismatch."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    masks = Masks.ones(model, structure="filter")
    assert "0.bias" in masks.tied_biases
    other = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(sfpk.MaskMismatchError, match="0.bias"):
        masks.check_fits(other)


def test_a_model_can_declare_parameters_its_default_rule_leaves_out():
    """sfpk_default_exclude (e.g. a transformer's LM head) applies unless include is given."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model.sfpk_default_exclude = ["1.*"]
    assert list(Masks.ones(model)) == ["0.weight"]
    assert list(Masks.ones(model, include=["*.weight"])) == ["0.weight", "1.weight"]
