"""Pruning on every zoo model family: exact counts, zeros that stick, residual semantics.

Issue #6: every method must work on every zoo model, unstructured and structured. The core
tests use toy nets; these use the real builders (small inputs, tiny batches) so layer types
and wiring the toys lack (depthwise convs, projection shortcuts, conv classifiers) are hit.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

import sfpk
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks
from sfpk.models import create

# family -> (registry name, input shape without batch dim, builder options)
FAMILIES: dict[str, tuple[str, tuple[int, ...], dict[str, object]]] = {
    "mlp": ("mlp", (40,), {}),
    "cnn1d": ("cnn1d", (40,), {}),
    "cnn_digits": ("cnn_digits", (1, 8, 8), {}),
    "cifar_resnet": ("resnet20", (3, 32, 32), {}),
    "vgg": ("vgg11_bn", (3, 32, 32), {}),
    "wrn": ("wrn", (3, 32, 32), {"depth": 10, "width": 1}),
    "imagenet_resnet": ("resnet50", (3, 64, 64), {}),
    "mobilenet": ("mobilenetv1", (3, 64, 64), {"width_mult": 0.25}),
}
RESIDUAL = ["cifar_resnet", "wrn", "imagenet_resnet"]
CLASSES = 10
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _build(family: str, seed: int = 0) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """A seeded zoo model of ``family`` and one random batch of 2 inputs."""
    name, shape, options = FAMILIES[family]
    torch.manual_seed(seed)
    model = create(name, num_classes=CLASSES, input_shape=shape, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    batch = (torch.randn(2, *shape, generator=gen), torch.randint(0, CLASSES, (2,), generator=gen))
    return model, [batch]


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/linear modules by the name of their weight, counted from the modules themselves."""
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, _LAYERS)}


def _assert_pruned_weights_zero(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.effective_masks().items():
        pruned = (mask == 0).expand_as(params[name])
        assert int(torch.count_nonzero(params[name].detach()[pruned])) == 0, name


def _apply_and_forward(model: nn.Module, masks: Masks, data) -> Tensor:
    """Apply the masks, check the pruned weights are zero, and run one eval forward."""
    masks.apply(model)
    _assert_pruned_weights_zero(model, masks)
    with torch.no_grad():
        out = model.eval()(data[0][0])
    assert out.shape == (2, CLASSES) and torch.isfinite(out).all()
    return out


# A global top-k over ResNet-50's 23 M weights takes ~3 s.
SLOW_GLOBAL = {"imagenet_resnet"}


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_GLOBAL else f for f in sorted(FAMILIES)],
)
def test_unstructured_global_removes_exactly_floor_s_p(family):
    """Global magnitude pruning removes exactly floor(s * P) weights on every zoo model."""
    model, data = _build(family)
    total = sum(m.weight.numel() for m in _layers(model).values())
    masks = sfpk.prune(model, data, method="mag", sparsity=0.7)
    assert masks.total_weights() == total
    assert total - masks.kept_weights() == math.floor(0.7 * total)
    _apply_and_forward(model, masks, data)
    zeros = sum(int((m.weight == 0).sum()) for m in _layers(model).values())
    assert zeros == math.floor(0.7 * total)  # random init has no zeros of its own


def _groups(module: nn.Module, structure: str) -> int:
    """Output filters (filter) or input channels per group (channel) of a conv/linear layer."""
    return module.weight.shape[0] if structure == "filter" else module.weight.shape[1]


def _assert_local_exact(model: nn.Module, masks: Masks, structure: str, sparsity: float) -> None:
    """Exact per-layer counts; filter masks leave the classifier (rows = classes) alone."""
    layers = _layers(model)
    classifier = list(layers)[-1]
    assert layers[classifier].weight.shape[0] == CLASSES
    expected = [
        n
        for n, m in layers.items()
        if (structure == "filter" and n != classifier)
        or (structure == "channel" and _groups(m, structure) > 1)
    ]
    assert list(masks) == expected
    for name in masks:
        groups = _groups(layers[name], structure)
        assert masks[name].numel() == groups
        assert int(masks[name].sum()) == groups - math.floor(sparsity * groups), name


@pytest.mark.parametrize("structure", ["filter", "channel"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_structured_local_mag_is_exact_per_layer(family, structure):
    """Local filter/channel pruning removes floor(s * C) groups from every conv/linear layer."""
    model, data = _build(family)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, scope="local", structure=structure)
    _assert_local_exact(model, masks, structure, 0.5)
    _apply_and_forward(model, masks, data)


@pytest.mark.parametrize("structure", ["filter", "channel"])
@pytest.mark.parametrize("family", ["cifar_resnet", "wrn"])
def test_structured_local_snip_on_residual_nets(family, structure):
    """A data-driven score (SNIP) also gives exact per-layer structured masks on ResNets."""
    model, data = _build(family)
    masks = sfpk.prune(
        model, data, method="snip", sparsity=0.4, scope="local", structure=structure, batches=1
    )
    _assert_local_exact(model, masks, structure, 0.4)
    _apply_and_forward(model, masks, data)


def test_every_layer_of_a_residual_net_gets_its_own_mask():
    """Spec §1.1: 1x1 downsample convs are masked, identity shortcuts carry no mask."""
    for family in RESIDUAL:
        model, _ = _build(family)
        masks = Masks.ones(model, structure="filter")
        assert list(masks) == list(_layers(model)), family
        projections = [n for n in masks if masks.shapes[n][2:] == (1, 1)]
        assert projections, family  # every residual family has 1x1 downsample convs


def _conv_outputs(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """Output of every conv, by the name of its weight, from one eval forward."""
    outputs: dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, key=f"{name}.weight": outputs.__setitem__(key, out.detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(inputs)
    for handle in handles:
        handle.remove()
    return outputs


def test_pruned_filters_emit_exactly_zero_on_a_resnet():
    """Filter masks silence a conv's output channel exactly, the biased conv classifier too
    (pruned as the reference does, with protect_output=False)."""
    torch.manual_seed(0)
    model = create("resnet32", num_classes=CLASSES)  # the reference's 1x1-conv classifier
    nn.init.constant_(model.fc.bias, 1.0)  # a live bias must not leak through a pruned filter
    inputs = torch.randn(2, 3, 32, 32)
    masks = sfpk.prune(
        model, [(inputs, torch.zeros(2, dtype=torch.long))], method="mag", sparsity=0.5,
        scope="local", structure="filter", protect_output=False,
    )  # fmt: skip
    assert masks.tied_biases == {"fc.bias": "fc.weight"}
    masks.apply(model)
    outputs = _conv_outputs(model, inputs)
    assert set(outputs) == set(masks)
    for name, out in outputs.items():
        pruned = masks[name].reshape(-1) == 0
        assert int(torch.count_nonzero(out[:, pruned])) == 0, name
        assert int(torch.count_nonzero(out[:, ~pruned])) > 0, name


def test_identity_shortcut_carries_a_channel_whose_last_filter_is_pruned():
    """Masks are per layer: pruning conv2's filter c leaves channel c's identity path alive."""
    torch.manual_seed(0)
    model = create("resnet20", num_classes=CLASSES).eval()
    block = model.layer1[1]  # 16 -> 16 channels: identity shortcut
    assert isinstance(block.shortcut, nn.Identity)
    masks = Masks.ones(model, structure="filter")
    removed = [0, 5, 11]
    tensors = dict(masks.items())
    tensors["layer1.1.conv2.weight"] = masks["layer1.1.conv2.weight"].clone()
    tensors["layer1.1.conv2.weight"][removed] = 0.0
    masks.with_tensors(tensors).apply(model)
    captured: dict[str, Tensor] = {}
    block.register_forward_hook(lambda _m, inp, out: captured.update(x=inp[0], y=out))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    x, y = captured["x"], captured["y"]
    # A fresh BN in eval mode maps the zero channel to 0, so the block's output is relu(x).
    torch.testing.assert_close(y[:, removed], torch.relu(x[:, removed]), rtol=0, atol=0)
    assert int(torch.count_nonzero(y[:, removed])) > 0


def test_depthwise_convs_get_filter_masks_but_no_channel_masks():
    """A depthwise conv has one input channel per group: filter masks only, never a 1-entry gate."""
    model, data = _build("mobilenet")
    depthwise = [
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
    ]
    assert depthwise and all(model.get_parameter(n).shape[1] == 1 for n in depthwise)
    assert set(depthwise) <= set(Masks.ones(model, structure="filter"))
    assert not set(depthwise) & set(Masks.ones(model, structure="channel"))
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, scope="local", structure="filter")
    _apply_and_forward(model, masks, data)
    outputs = _conv_outputs(model, data[0][0])
    for name in depthwise:  # the filter mask silences that depthwise channel exactly
        pruned = masks[name].reshape(-1) == 0
        assert pruned.any() and int(torch.count_nonzero(outputs[name][:, pruned])) == 0, name


def test_one_channel_input_conv_gets_no_channel_mask():
    """A conv on one-channel inputs cannot lose its only channel: no channel mask for it."""
    model, _ = _build("cnn_digits")
    first = next(n for n, m in _layers(model).items() if m.weight.shape[1] == 1)
    assert first in Masks.ones(model, structure="filter")
    assert first not in Masks.ones(model, structure="channel")


def test_channel_masks_on_only_depthwise_weights_are_refused():
    """Asking for channel masks on nothing but depthwise convs names the problem."""
    model, _ = _build("mobilenet")
    with pytest.raises(ConfigError, match="single input channel per group"):
        Masks.ones(model, structure="channel", include=["features.3.weight"])


def _tiny(method: str) -> dict[str, object]:
    """The cheapest options a method accepts, read from its Options fields."""
    fields = {f.name for f in dataclasses.fields(sfpk.pruner_class(method).Options)}
    cheap = {"rounds": 2, "batches": 1, "num_steps": 2, "num_particles": 2}
    return {k: v for k, v in cheap.items() if k in fields}


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_prunes_resnet20_to_exact_global_sparsity(method):
    """Each registered method (later ones join automatically) lands on floor(s * P) on ResNet-20."""
    model, data = _build("cifar_resnet")
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.8, seed=1, scope="global", **_tiny(method)
    )
    total = masks.total_weights()
    assert (masks.method, total - masks.kept_weights()) == (method, math.floor(0.8 * total))
    _apply_and_forward(model, masks, data)


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_prunes_resnet20_filters_exactly_per_layer(method):
    """Each method also gives exact local filter masks on ResNet-20 (structured spec §1.4)."""
    model, data = _build("cifar_resnet")
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.5, scope="local", structure="filter", seed=1,
        **_tiny(method),
    )  # fmt: skip
    _assert_local_exact(model, masks, "filter", 0.5)
    _apply_and_forward(model, masks, data)
