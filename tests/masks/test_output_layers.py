"""Filter masks leave the layers producing a model's output (its classes) unpruned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from sfpk.errors import ConfigError
from sfpk.masks.output_layers import find_output_layers, output_parameter_names
from sfpk.models import create


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
    """Ops after the head are walked through; summed heads are both output layers; of a dict
    output only the main one (``logits``) counts, not auxiliary or hidden-state tensors."""
    torch.manual_seed(0)
    assert find_output_layers(LogSoftmaxNet(), torch.randn(2, 6)) == ["fc"]
    assert find_output_layers(TwoHeads(), torch.randn(2, 6)) == ["head_a", "head_b"]
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
    """A declared layer is used as it is (no trace); bad declarations are named."""
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
    """With include_bias, the output layer's bias is left alone with its weight."""
    torch.manual_seed(0)
    masks = sfpk.prune(
        LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, structure="filter", include_bias=True
    )
    assert "fc.bias" not in masks and "fc.weight" not in masks and "body.3.bias" in masks
    assert output_parameter_names(LogSoftmaxNet(), ["fc"]) == ["fc.weight", "fc.bias"]


def test_only_filter_masks_are_affected():
    """Unstructured and channel masks do not remove outputs: the head stays prunable."""
    torch.manual_seed(0)
    for structure in ("unstructured", "channel"):
        masks = sfpk.prune(
            LogSoftmaxNet(), _data(), method="mag", sparsity=0.5, structure=structure
        )
        assert "fc.weight" in masks, structure


def test_an_excluded_head_leaves_the_layer_behind_it_prunable():
    """The layer before an unprunable head keeps its filter mask."""
    torch.manual_seed(0)
    masks = sfpk.prune(ExcludedHead(), _data(classes=5), method="mag", sparsity=0.5,
                       structure="filter")  # fmt: skip
    assert list(masks) == ["up.weight", "down.weight"]


def test_clear_errors():
    """No data, nothing but the output layer prunable, or a non-bool flag: named errors."""
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


class Pair(nn.Module):
    """Takes [N, 2, 3] inputs: the DataLoader's collate_fn reshapes [3]-items into them."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.body(x.flatten(1))))


def test_a_declared_container_protects_the_layers_inside_it():
    """``sfpk_output_layers = ("classifier",)`` on a Sequential(Dropout, Linear) head."""
    model = Pair()
    model.sfpk_output_layers = ("classifier",)
    masks = sfpk.prune(model, None, method="mag", sparsity=0.5, structure="filter")
    assert list(masks) == ["body.weight"] and masks.unpruned_outputs == ["classifier"]


def test_the_trace_reads_data_as_the_pruner_does_and_leaves_it_alone():
    """The example input comes through the loader's own collate_fn, a one-shot iterator is
    refused (it would lose its first batch), and no random draw of the caller moves."""
    torch.manual_seed(0)

    class Jittered(torch.utils.data.TensorDataset):
        def __getitem__(self, index):  # a random augmentation on the global generator
            x, y = super().__getitem__(index)
            return x + 0.01 * torch.randn_like(x), y

    items = Jittered(torch.randn(8, 6), torch.randint(0, 4, (8,)))

    def pairs(batch):
        inputs, targets = torch.utils.data.default_collate(batch)
        return inputs.view(-1, 2, 3), targets

    loader = torch.utils.data.DataLoader(items, batch_size=4, collate_fn=pairs)
    torch.manual_seed(5)
    masks = sfpk.prune(Pair(), loader, method="snip", sparsity=0.5, structure="filter", batches=1)
    drawn = torch.rand(1)
    torch.manual_seed(5)
    sfpk.prune(Pair(), loader, method="snip", sparsity=0.5, structure="filter",
               batches=1, protect_output=False)  # fmt: skip
    assert torch.equal(drawn, torch.rand(1))
    assert masks.unpruned_outputs == ["classifier.1"]
    with pytest.raises(ConfigError, match="one-shot iterator that cannot be read again"):
        sfpk.prune(Pair(), iter(list(loader)), method="mag", sparsity=0.5, structure="filter")


def test_a_model_failing_on_the_example_names_the_trace():
    """A forward that fails on the one-row example says what sfpk was doing and the ways out."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ConfigError, match=r"finding the layer that produces Sequential's output"):
        sfpk.prune(model, [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))],
                   method="mag", sparsity=0.5, structure="filter")  # fmt: skip


def test_layer_names_with_glob_characters_are_protected_literally():
    """ModuleDict keys such as "cls[a]" are names, not fnmatch patterns."""
    model = nn.Module()
    model.body = nn.Linear(6, 8)
    model.heads = nn.ModuleDict({"cls[a]": nn.Linear(8, 4)})
    model.forward = lambda x: model.heads["cls[a]"](torch.relu(model.body(x)))
    masks = sfpk.prune(model, _data(), method="mag", sparsity=0.5, structure="filter")
    assert list(masks) == ["body.weight"] and masks.unpruned_outputs == ["heads.cls[a]"]
