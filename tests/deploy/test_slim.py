"""Slimming: pruned filters/channels are removed without changing the masked model's outputs."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from torch import nn

from sfpk import models
from sfpk.data import load_dataset
from sfpk.deploy.slim import coupled_channel_groups, resize_to_state_, slim_model
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks

pytest.importorskip("torch_pruning", reason="the slim extra (torch-pruning) is not installed")

CIFAR_SHAPE = (3, 32, 32)
ZOO = {
    "cnn_digits": ((1, 8, 8), {"width": 8}),
    "resnet20": (CIFAR_SHAPE, {}),
    "mobilenetv1": (CIFAR_SHAPE, {"width_mult": 0.25}),
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build(name: str, seed: int = 0) -> nn.Module:
    shape, options = ZOO[name]
    torch.manual_seed(seed)
    return models.create(name, num_classes=10, input_shape=shape, **options).eval()


def _inputs(name: str, count: int = 16) -> torch.Tensor:
    """Real digits images for the digits CNN; image-like noise for the 32x32 models."""
    if name == "cnn_digits":
        splits = load_dataset("digits", seed=0, augment=False)
        return torch.stack([splits.test[i][0] for i in range(count)])
    return torch.randn(count, *ZOO[name][0], generator=torch.Generator().manual_seed(1))


def _train_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm as after training: statistics of the data, shifts and scales not 0 and 1."""
    generator = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data = 0.5 + torch.rand(module.num_features, generator=generator)
            module.bias.data = 0.3 * torch.randn(module.num_features, generator=generator)
    model.train()(x)
    model.eval()


def _random_masks(model: nn.Module, structure: str, seed: int = 3) -> Masks:
    generator = torch.Generator().manual_seed(seed)
    masks = Masks.ones(model, structure=structure)
    return masks.with_tensors(
        {n: (torch.rand(t.shape, generator=generator) > 0.5).float() for n, t in masks.items()}
    )


def _masked_outputs(model: nn.Module, masks: Masks, x: torch.Tensor) -> torch.Tensor:
    return masks.apply(copy.deepcopy(model)).eval()(x)


@pytest.mark.parametrize("batchnorm", ["init", "trained"])
@pytest.mark.parametrize("structure", ["filter", "channel"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_slim_outputs_equal_masked_outputs(name, structure, batchnorm):
    """Plain, residual and depthwise models: the slim model computes what the masked one does."""
    model = _build(name)
    x = _inputs(name)
    if batchnorm == "trained":
        _train_batchnorm(model, x)
    masks = _random_masks(model, structure)
    slim = slim_model(model, masks, x[:2])
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)
    assert _params(slim) < _params(model)


def _digits_params(a: int, b: int, c: int, classes: int = 10) -> int:
    """cnn_digits parameters with conv widths a, b, c (3x3 convs, no bias, BN, linear head)."""
    return 9 * (1 * a + a * b + b * c) + 2 * (a + b + c) + c * classes + classes


@pytest.mark.parametrize("structure", ["filter", "channel"])
def test_plain_cnn_loses_exactly_the_pruned_channels(structure):
    """Pruning 3, 6 and 4 of the 8/16/16 channels leaves a 5/10/12 network, counted by hand."""
    model = _build("cnn_digits")
    assert _params(model) == _digits_params(8, 16, 16)
    masks = Masks.ones(model, structure=structure)
    tensors = dict(masks.items())
    if structure == "filter":  # a conv's filters: its output channels
        cuts = {"features.0.weight": [0, 2, 7], "features.3.weight": [1, 3, 5, 8, 9, 15]}
        cuts["features.7.weight"] = [0, 4, 6, 11]
        for name, rows in cuts.items():
            tensors[name][rows] = 0
    else:  # the consumer's input channels: same wires, seen from the next layer
        cuts = {"features.3.weight": [0, 2, 7], "features.7.weight": [1, 3, 5, 8, 9, 15]}
        cuts["fc.weight"] = [0, 4, 6, 11]
        for name, cols in cuts.items():
            tensors[name][:, cols] = 0
    masks = masks.with_tensors(tensors)
    x = _inputs("cnn_digits")
    slim = slim_model(model, masks, x[:2])
    assert _params(slim) == _digits_params(5, 10, 12)
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)


# ResNet-20's first residual wire (16 channels): the stem conv and bn1, each layer1 block's
# conv2 and bn2 produce it; each layer1 block's conv1, layer2.0.conv1 and layer2.0's 1x1
# shortcut read it. One channel of it holds these parameters:
# fmt: off
_RESIDUAL_CHANNEL = (
    3 * 9 + 2  # stem filter (3 inputs, 3x3) and its BN
    + 3 * (16 * 9 + 2)  # layer1.{0,1,2}.conv2 filters and bn2
    + 3 * 16 * 9  # layer1.{0,1,2}.conv1 input channel
    + 32 * 9  # layer2.0.conv1 input channel
    + 32  # layer2.0.shortcut 1x1 conv input channel
)
# fmt: on
_RESIDUAL_PRODUCERS = ["conv1.weight", *(f"layer1.{b}.conv2.weight" for b in range(3))]


def _resnet_filter_masks(model: nn.Module, pruned_filters: dict[str, list[int]]) -> Masks:
    masks = Masks.ones(model, structure="filter")
    tensors = dict(masks.items())
    for name, rows in pruned_filters.items():
        tensors[name][rows] = 0
    return masks.with_tensors(tensors)


def test_residual_channel_pruned_in_every_branch_is_removed():
    """Channel 5 pruned by every producer of the residual sum: gone from all 12 tensors."""
    model = _build("resnet20")
    masks = _resnet_filter_masks(model, {n: [5] for n in _RESIDUAL_PRODUCERS})
    x = _inputs("resnet20")
    slim = slim_model(model, masks, x[:2])
    assert _params(model) - _params(slim) == _RESIDUAL_CHANNEL
    assert slim.layer2[0].shortcut[0].in_channels == 15
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)


def test_residual_channel_kept_by_one_branch_stays():
    """Pruned in three producers but kept by layer1.1.conv2: removing it would change outputs."""
    model = _build("resnet20")
    x = _inputs("resnet20")
    partial = [n for n in _RESIDUAL_PRODUCERS if n != "layer1.1.conv2.weight"]
    masks = _resnet_filter_masks(model, {n: [5] for n in partial})
    slim = slim_model(model, masks, x[:2])
    assert _params(slim) == _params(model)
    masked = _masked_outputs(model, masks, x)
    torch.testing.assert_close(slim(x), masked, atol=1e-5, rtol=1e-4)
    # The other rule ("remove a coupled channel if any member prunes it") computes what the
    # fully pruned channel computes, which is not the masked model:
    everywhere = _resnet_filter_masks(model, {n: [5] for n in _RESIDUAL_PRODUCERS})
    assert not torch.allclose(_masked_outputs(model, everywhere, x), masked, atol=1e-4)


def test_internal_channel_of_a_block_is_removed():
    """A pruned layer1.0.conv1 filter removes it, its BN entry and conv2's input channel."""
    model = _build("resnet20")
    masks = _resnet_filter_masks(model, {"layer1.0.conv1.weight": [0, 9]})
    slim = slim_model(model, masks, _inputs("resnet20")[:2])
    assert _params(model) - _params(slim) == 2 * (16 * 9 + 2 + 16 * 9)
    assert tuple(slim.layer1[0].conv2.weight.shape) == (16, 14, 3, 3)


def test_depthwise_channel_follows_the_pointwise_consumer():
    """MobileNet channel mask on a pointwise conv removes the channel through the depthwise conv."""
    model = _build("mobilenetv1")
    layers = model.features
    # features.12 is the pointwise conv of block 2; its input channels come from the
    # depthwise conv features.9 (and BN 10), which gets them from pointwise features.6 (BN 7).
    producer, depthwise, consumer = layers[6], layers[9], layers[12]
    assert depthwise.groups == depthwise.in_channels == consumer.in_channels
    masks = Masks.ones(model, structure="channel")
    tensors = dict(masks.items())
    tensors["features.12.weight"][:, [1, 2, 3]] = 0
    masks = masks.with_tensors(tensors)
    x = _inputs("mobilenetv1")
    slim = slim_model(model, masks, x[:2])
    per_channel = producer.in_channels + 2 + 9 + 2 + consumer.out_channels
    assert _params(model) - _params(slim) == 3 * per_channel
    assert slim.features[9].groups == slim.features[9].out_channels == depthwise.groups - 3
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("shift", "removed"), [(0.5, False), (-0.5, True)])
def test_batchnorm_shift_decides_whether_a_pruned_filter_goes(shift, removed):
    """A pruned filter whose BN emits a positive shift feeds the next layer: it must stay."""
    model = _build("cnn_digits")
    model.features[1].bias.data[4] = shift  # after the ReLU: 0.5 stays, -0.5 becomes 0
    masks = _resnet_filter_masks(model, {"features.0.weight": [4]})
    x = _inputs("cnn_digits")
    slim = slim_model(model, masks, x[:2])
    assert slim.features[0].out_channels == (7 if removed else 8)
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_slim_refuses_masks_that_are_not_structured(structure):
    """Single weights cannot be removed: the error names the structure and the allowed ones."""
    model = _build("cnn_digits")
    masks = Masks.ones(model, structure=structure)
    with pytest.raises(ConfigError, match=rf"structure='{structure}'.*'filter' or 'channel'"):
        slim_model(model, masks, _inputs("cnn_digits")[:2])


def test_slim_leaves_the_model_unchanged():
    """The caller's model keeps its weights, shapes and training mode."""
    model = _build("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slim_model(model, _random_masks(model, "filter"), _inputs("resnet20")[:2])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_torch_pruning_is_named(monkeypatch):
    """Without the extra, slimming says which package and extra to install."""
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # makes the import fail
    model = _build("cnn_digits")
    with pytest.raises(ConfigError, match=r"sfpk\[slim\]"):
        slim_model(model, _random_masks(model, "filter"), _inputs("cnn_digits")[:2])


def test_resize_to_state_rebuilds_a_slim_model_without_torch_pruning(monkeypatch):
    """A fresh architecture resized to the slim state dict loads it and computes the same."""
    model = _build("mobilenetv1")
    masks = _random_masks(model, "filter")
    x = _inputs("mobilenetv1")
    slim = slim_model(model, masks, x[:2])
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    fresh = _build("mobilenetv1", seed=9)
    resized = resize_to_state_(fresh, slim.state_dict())
    assert resized and "fc" in resized
    fresh.load_state_dict(slim.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), slim(x))


def test_coupled_channel_groups_of_resnet20():
    """13 groups: 9 block-internal wires, 3 residual wires (one per stage), the classes."""
    groups = coupled_channel_groups(_build("resnet20"), torch.zeros(1, *CIFAR_SHAPE))
    assert sorted(g.size for g in groups) == [10] + [16] * 4 + [32] * 4 + [64] * 4
    stage1 = next(g for g in groups if ("conv1.weight", 0) in g.members)
    assert stage1.size == 16
    expected = {
        ("conv1.weight", 0), ("bn1.weight", 0), ("bn1.bias", 0),
        *((f"layer1.{b}.conv2.weight", 0) for b in range(3)),
        *((f"layer1.{b}.bn2.bias", 0) for b in range(3)),
        *((f"layer1.{b}.conv1.weight", 1) for b in range(3)),
        ("layer2.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1),
    }  # fmt: skip
    assert expected <= set(stage1.members)
    assert not any(name.startswith("layer2.0.conv2") for name, _ in stage1.members)
    internal = next(g for g in groups if ("layer1.0.conv1.weight", 0) in g.members)
    assert set(internal.members) == {
        ("layer1.0.conv1.weight", 0),
        ("layer1.0.bn1.weight", 0),
        ("layer1.0.bn1.bias", 0),
        ("layer1.0.conv2.weight", 1),
    }
    # every conv/linear output dim belongs to exactly one group
    outputs = [m for g in groups for m in g.members if m[1] == 0 and m[0].endswith("weight")]
    weights = [n for n, p in _build("resnet20").named_parameters() if p.dim() > 1]
    assert sorted(n for n, _ in outputs if n in weights) == sorted(weights)
    assert json.loads(json.dumps([g.as_dict() for g in groups]))[0]["size"] == groups[0].size


def test_constant_channels_before_the_classifier_fold_into_its_bias():
    """Pruned last-conv filters whose BN emits a positive constant: folded into fc.bias, gone."""
    model = _build("cnn_digits")
    model.features[8].bias.data[:] = 0.5  # BN of the last conv: every channel shifts by 0.5
    masks = _resnet_filter_masks(model, {"features.7.weight": [0, 1, 2, 3, 4, 5]})
    x = _inputs("cnn_digits")
    slim = slim_model(model, masks, x[:2])
    assert slim.features[7].out_channels == slim.fc.in_features == 10
    assert not torch.equal(slim.fc.bias, model.fc.bias)  # it carries the constants now
    torch.testing.assert_close(slim(x), _masked_outputs(model, masks, x), atol=1e-5, rtol=1e-4)
