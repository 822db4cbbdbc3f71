"""Tests of sfpk.models: every registered model builds and runs, sizes, weights, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sfpk.errors import CheckpointError, ConfigError, UnknownNameError
from sfpk.models import (
    count_parameters,
    create,
    create_model,
    external_prefixes,
    is_external,
    list_models,
    load_weights,
    model_builder,
    register_model,
    register_prefix,
)

SMALL_INPUTS = {
    "mlp": (40,),
    "cnn1d": (40,),
    "cnn_digits": (1, 8, 8),
    "gpt_tiny": (16,),  # 16 token ids
    "vit_tiny": (1, 8, 8),
    "unet_tiny": (1, 16, 16),
}
IMAGENET_MODELS = {"resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv1"}


def _input_shape(name: str) -> tuple[int, ...]:
    if name in SMALL_INPUTS:
        return SMALL_INPUTS[name]
    return (3, 64, 64) if name in IMAGENET_MODELS else (3, 32, 32)


def _prunable_count(model: nn.Module) -> int:
    """Conv and linear weights plus linear biases: the default prunable set (spec §1.1)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            total += module.weight.numel()
        if isinstance(module, nn.Linear):
            total += module.bias.numel()
    return total


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_forward(name: str) -> None:
    """Any registered model must produce finite [batch, num_classes] logits ([B, T, V]: LMs).

    A denoiser returns its predicted and true noise, ``[B, 2, *input_shape]``.
    """
    torch.manual_seed(0)
    shape = _input_shape(name)
    model = create(name, num_classes=7, input_shape=shape).eval()
    task = getattr(model, "sfpk_task", "classification")
    if task == "language_model":
        inputs, expected = torch.randint(0, 7, (2, *shape)), (2, *shape, 7)  # [B, T, V] logits
    elif task == "denoise":
        inputs, expected = torch.randn(2, *shape), (2, 2, *shape)
    else:
        inputs, expected = torch.randn(2, *shape), (2, 7)
    with torch.no_grad():
        logits = model(inputs)
    assert logits.shape == expected
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_every_model_uses_only_plain_layers(name: str) -> None:
    """Generic mask-based pruning needs plain torch layers, not custom masked ones.

    Parameter-free leaves of a diffusers UNet (its sinusoidal timestep embedding) hold
    nothing to mask and are allowed there.
    """
    model = create(name, num_classes=3, input_shape=_input_shape(name))
    denoiser = getattr(model, "sfpk_task", None) == "denoise"
    leaf_modules = {
        type(m)
        for m in model.modules()
        if not list(m.children()) and (not denoiser or any(True for _ in m.parameters()))
    }
    assert all(cls.__module__.startswith("torch.nn") for cls in leaf_modules)


@pytest.mark.parametrize(
    ("name", "num_classes", "expected", "tolerance"),
    [
        ("resnet20", 100, 278_324, 0.0),
        ("resnet56", 10, 855_770, 0.0),
        ("resnet50", 1000, 25_557_032, 0.0),  # torchvision's ResNet-50
        ("mobilenetv1", 1000, 4_231_976, 0.0),
        ("vgg19_bn", 10, 20_040_000, 0.01),
        ("wrn28x2", 10, 1_467_610, 0.01),
    ],
)
def test_parameter_counts_match_published_sizes(name, num_classes, expected, tolerance) -> None:
    """Architectures must match the papers, or results are not comparable."""
    count = count_parameters(create(name, num_classes=num_classes))
    assert abs(count - expected) <= tolerance * expected


def test_resnet20_prunable_count_matches_method_spec() -> None:
    """Spec §1.1 sanity number: CIFAR-100 ResNet-20 has 276,756 prunable entries."""
    assert _prunable_count(create("resnet20", num_classes=100)) == 276_756


def test_resnet32_uses_reference_widths_and_conv_classifier() -> None:
    """Spec §5.6: the reference resnet32 has widths 32/64/128 and a 1x1-conv classifier."""
    model = create("resnet32", num_classes=10)
    assert model.conv1.out_channels == 32 and model.layer3[0].conv1.out_channels == 128
    assert isinstance(model.fc, nn.Conv2d) and model.fc.kernel_size == (1, 1)


def test_wrn_options_change_depth_and_width() -> None:
    """create('wrn', depth=, width=) must build the requested network."""
    model = create("wrn", num_classes=10, depth=16, width=4)
    assert len(model.layer1) == 2 and model.fc.in_features == 256


def test_input_shape_sets_input_channels_and_features() -> None:
    """Models must adapt to the data: grey images and other sequence lengths."""
    assert create("resnet20", num_classes=10, input_shape=(1, 28, 28)).conv1.in_channels == 1
    assert create("mlp", num_classes=10, input_shape=(1, 8, 8))[1].in_features == 64
    model = create("cnn1d", num_classes=10, input_shape=(2, 24))
    assert model(torch.randn(3, 2, 24)).shape == (3, 10)


def test_bad_architecture_options_raise_config_error() -> None:
    """Impossible depths and unknown options must name the bad value."""
    with pytest.raises(ConfigError, match="depth=30"):
        create("wrn", num_classes=10, depth=30)
    with pytest.raises(ConfigError, match="depth=21"):
        create("resnet_cifar", num_classes=10, depth=21)
    with pytest.raises(ConfigError, match="widht"):
        create("wrn", num_classes=10, widht=2)


def test_unknown_model_name_lists_choices_with_close_match() -> None:
    """A typo must be an UnknownNameError suggesting the right name."""
    with pytest.raises(UnknownNameError, match="Did you mean .*resnet20"):
        create("resnet2O", num_classes=10)


def test_create_model_is_an_alias_and_names_are_case_insensitive() -> None:
    """timm-style create_model must be the same factory; names ignore case."""
    assert create_model is create
    assert isinstance(create("ResNet20", num_classes=10), nn.Module)


def test_registering_a_taken_name_raises() -> None:
    """Two builders under one name would silently shadow each other."""
    with pytest.raises(ConfigError, match="already registered"):

        @register_model
        def mlp(*, num_classes: int, input_shape=None) -> nn.Module:
            return nn.Linear(1, num_classes)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_name_is_refused_a_second_time(name: str) -> None:
    """Registering any taken name (in any case) fails and leaves the first builder in place."""
    before = model_builder(name)
    with pytest.raises(ConfigError, match="already registered"):
        register_model(lambda **kw: nn.Identity(), name=name.upper())
    assert model_builder(name) is before


@pytest.mark.parametrize("prefix", external_prefixes())
def test_registering_a_taken_external_prefix_raises(prefix: str) -> None:
    """A second library under tv:, timm: or hf: would silently shadow the first."""
    with pytest.raises(ConfigError, match="already registered"):
        register_prefix(prefix)(lambda name, **kw: nn.Identity())


def test_unknown_model_lists_every_choice() -> None:
    """The error carries the whole registry, so the CLI and config can show what exists."""
    with pytest.raises(UnknownNameError) as info:
        model_builder("resnet21")
    assert info.value.choices == list_models()
    assert all(name in str(info.value) for name in list_models())


def test_external_prefixes_come_from_the_registry() -> None:
    """tv:, timm: and hf: are registered once; other names with a colon are not external."""
    assert external_prefixes() == ["hf", "timm", "tv"]
    assert is_external("tv:resnet18") and is_external("TIMM:resnet18") and is_external("hf:gpt2")
    assert not is_external("onnx:bert") and not is_external("resnet20")
    with pytest.raises(UnknownNameError):
        create("onnx:bert", num_classes=10)


def test_list_models_holds_own_names_only() -> None:
    """External tv:/timm:/hf: models are resolved on demand, never listed."""
    names = list_models()
    assert {"mlp", "cnn1d", "resnet20", "resnet50", "vgg19_bn", "wrn", "mobilenetv1"} <= set(names)
    assert not any(":" in name for name in names) and names == sorted(names)


@pytest.mark.parametrize("prefix", ["tv", "timm"])
def test_external_prefix_without_library_says_how_to_install(prefix, monkeypatch) -> None:
    """Optional extras must fail with the pip command, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, {"tv": "torchvision", "timm": "timm"}[prefix], None)
    with pytest.raises(ConfigError, match=r"pip install 'sfpk\[vision\]'"):
        create(f"{prefix}:resnet18", num_classes=10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_weights_round_trip(suffix: str, tmp_path) -> None:
    """Weights saved by sfpk (safetensors) or plain torch.save must load back exactly."""
    torch.manual_seed(0)
    source = create("resnet20", num_classes=10)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    target = load_weights(create("resnet20", num_classes=10), path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_weights_unwraps_checkpoints_and_module_prefix(tmp_path) -> None:
    """Training checkpoints ({'state_dict': ...}) from DataParallel ('module.') must load."""
    source = create("mlp", num_classes=10)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save({"epoch": 3, **wrapped}, tmp_path / "ckpt.pth")
    target = load_weights(create("mlp", num_classes=10), tmp_path / "ckpt.pth")
    assert torch.equal(target[1].weight, source[1].weight)


def test_load_weights_mismatch_lists_names(tmp_path) -> None:
    """Loading the wrong architecture must say which names and shapes differ."""
    save_file(create("resnet20", num_classes=100).state_dict(), str(tmp_path / "r20.safetensors"))
    with pytest.raises(CheckpointError, match=r"mis-shaped: fc.weight \(100, 64\)"):
        load_weights(create("resnet20", num_classes=10), tmp_path / "r20.safetensors")
    with pytest.raises(CheckpointError, match="60 missing: layer1.3.conv1.weight") as info:
        load_weights(create("resnet32", num_classes=100), tmp_path / "r20.safetensors")
    assert "mis-shaped: conv1.weight (16, 3, 3, 3) vs model (32, 3, 3, 3)" in str(info.value)
    shallower = create("resnet_cifar", num_classes=100, depth=14)
    with pytest.raises(CheckpointError, match="36 unexpected: layer1.2.bn1.bias"):
        load_weights(shallower, tmp_path / "r20.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_weights_corrupted_file_raises_checkpoint_error(suffix: str, tmp_path) -> None:
    """A truncated download must be a CheckpointError naming the file."""
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match=f"broken{suffix}"):
        load_weights(create("mlp", num_classes=10), path)


def test_load_weights_missing_file_raises_checkpoint_error(tmp_path) -> None:
    """A wrong path must say the file does not exist."""
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(create("mlp", num_classes=10), tmp_path / "nope.safetensors")
