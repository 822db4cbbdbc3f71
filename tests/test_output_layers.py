"""Filter masks leave the layers producing a model's output (its classes) unpruned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from sfpk.errors import ConfigError
from sfpk.models import create
from sfpk.output_layers import find_output_layers, output_parameter_names


class LogSoftmaxNet(nn.Module):
    """Ops after the classifier (log_softmax, an in-place scale) are walked through."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.relu(self.body(x)))
        out.mul_(2.0)
        return torch.log_softmax(out, dim=1)


class TwoHeads(nn.Module):
    """Two heads summed, returned in a dict with an auxiliary tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 8)
        self.head_a = nn.Linear(8, 4)
        self.head_b = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.trunk(x))
        return {"logits": self.head_a(h) + self.head_b(h), "aux": self.aux(h)}


class ExcludedHead(nn.Module):
    """An LM-style head the default rule leaves out: the walk must stop at it anyway."""

    sfpk_default_exclude = ("head.weight",)

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 8)
        self.down = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(x))) + 1.0)


def _data(features: int = 6, classes: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, features, generator=gen), torch.randint(0, classes, (8,), generator=gen))
    ]


def test_the_zoo_classifiers_are_found():
    """The last Linear of the MLP and of cnn1d: the layers whose rows are the classes."""
    torch.manual_seed(0)
    for name, found in (("mlp", "5"), ("cnn1d", "fc")):
        model = create(name, num_classes=10, input_shape=(40,))
        layers = find_output_layers(model, torch.randn(1, 40))
        assert layers == [found], name
        assert model.get_submodule(found).weight.shape[0] == 10


def test_ops_after_the_layer_and_several_heads():
    torch.manual_seed(0)
    assert find_output_layers(LogSoftmaxNet(), torch.randn(2, 6)) == ["fc"]
    assert find_output_layers(TwoHeads(), torch.randn(2, 6)) == ["head_a", "head_b", "aux"]
    # The walk stops at an unprunable head: the layer behind it is not an output layer.
    assert find_output_layers(ExcludedHead(), torch.randn(2, 6)) == ["head"]


def test_tracing_leaves_the_model_as_it_was():
    """Modes, BatchNorm statistics and requires_grad flags are restored after the trace."""
    torch.manual_seed(0)
    model = LogSoftmaxNet().train()
    model.body[0].weight.requires_grad_(False)
    before = {n: b.clone() for n, b in model.named_buffers()}
    find_output_layers(model, torch.randn(1, 6))  # a batch of 1 would fail BN in train mode
    assert model.training and model.body[1].training
    assert not model.body[0].weight.requires_grad and model.fc.weight.requires_grad
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_a_declared_output_layer_needs_no_data():
    torch.manual_seed(0)
    model = LogSoftmaxNet()
    model.sfpk_output_layers = ("fc",)
    masks = sfpk.prune(model, None, method="mag", sparsity=0.5, structure="filter")
    assert "fc.weight" not in masks and "body.3.weight" in masks
    model.sfpk_output_layers = ("nope",)
    with pytest.raises(ConfigError, match=r"sfpk_output_layers names no module \['nope'\]"):
        sfpk.prune(model, None, method="mag", sparsity=0.5, structure="filter")
    model.sfpk_output_layers = "fc"
    with pytest.raises(ConfigError, match="must be a sequence of module names"):
        sfpk.prune(model, None, method="mag", sparsity=0.5, structure="filter")


def test_filter_masks_keep_every_class_row_by_default(tmp_path):
    """Default: the classifier carries no mask, so every class keeps its row; with
    protect_output=False (the reference) half the class rows are cut at 50 % local."""
    torch.manual_seed(0)
    model, data = LogSoftmaxNet(), _data()
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, scope="local", structure="filter")
    assert list(masks) == ["body.0.weight", "body.3.weight"]
    assert all(int(masks[n].sum()) == 4 for n in masks)  # 8 rows, floor(0.5 * 8) removed
    assert masks.unpruned_outputs == ["fc"]  # recorded, and kept in the mask file
    assert sfpk.load_masks(masks.save(tmp_path / "m.safetensors")).unpruned_outputs == ["fc"]
    masks.apply(model)
    assert int(torch.count_nonzero(model.fc.weight)) == model.fc.weight.numel()
    cut = sfpk.prune(
        LogSoftmaxNet(), data, method="mag", sparsity=0.5, scope="local", structure="filter",
        protect_output=False,
    )  # fmt: skip
    assert list(cut) == ["body.0.weight", "body.3.weight", "fc.weight"]
    assert cut.unpruned_outputs == []
    assert int(cut["fc.weight"].sum()) == 2  # 2 of 4 classes gone


def test_the_output_layers_bias_is_protected_too():
    torch.manual_seed(0)
    masks = sfpk.prune(
        LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, structure="filter", include_bias=True
    )
    assert "fc.bias" not in masks and "fc.weight" not in masks and "body.3.bias" in masks
    assert output_parameter_names(LogSoftmaxNet(), ["fc"]) == ["fc.weight", "fc.bias"]


def test_only_filter_masks_are_affected():
    torch.manual_seed(0)
    for structure in ("unstructured", "channel"):
        masks = sfpk.prune(
            LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, structure=structure
        )
        assert "fc.weight" in masks, structure


def test_an_excluded_head_leaves_the_layer_behind_it_prunable():
    torch.manual_seed(0)
    masks = sfpk.prune(ExcludedHead(), _data(classes=5), method="mag", sparsity=0.5,
                       structure="filter")  # fmt: skip
    assert list(masks) == ["up.weight", "down.weight"]


def test_clear_errors():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="the data has none; pass a batch, declare"):
        sfpk.prune(LogSoftmaxNet(), None, method="mag", sparsity=0.5, structure="filter")
    with pytest.raises(ConfigError, match=r"every prunable parameter \(fc.weight\) belongs"):
        sfpk.prune(
            LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, structure="filter",
            include=["fc.weight"],
        )  # fmt: skip
    with pytest.raises(ConfigError, match="protect_output='yes' must be True or False"):
        sfpk.prune(LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, protect_output="yes")
    # The reference-compatible path turns the protection off.
    pruned = sfpk.prune(
        LogSoftmaxNet(), None, method="mag", sparsity=0.5, structure="filter", protect_output=False
    )
    assert "fc.weight" in pruned
