"""structure="coupled": channel groups pruned together, so slimming removes every one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import sfpk
from helpers import tiny_options
from sfpk.deploy.slim import slim_model
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks
from sfpk.models import create

pytest.importorskip("torch_pruning")

CASES = {  # name -> (input shape, classes)
    "resnet20": ((3, 16, 16), 10),
    "mobilenetv1": ((3, 32, 32), 10),
    "cnn_digits": ((1, 8, 8), 10),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _model_and_data(name: str):
    shape, classes = CASES[name]
    torch.manual_seed(0)
    options = {"width_mult": 0.25} if name == "mobilenetv1" else {}
    model = create(name, num_classes=classes, input_shape=shape, **options)
    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, *shape, generator=gen), torch.randint(0, classes, (8,), generator=gen))
        for _ in range(3)
    ]
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        for x, _ in data:
            model(x)
    return model.eval(), data


def _kept_per_block(masks: Masks) -> list[int]:
    out = []
    for block in masks.coupling.blocks:
        rows = [masks[m.name].reshape(-1) != 0 for m in block.members]
        assert all(torch.equal(rows[0], r) for r in rows), f"{block.name} is split"
        out.append(int(rows[0].sum()))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("method", "scope"), [("mag", "local"), ("snip", "global")])
def test_slim_removes_every_pruned_channel_and_keeps_the_outputs(name, method, scope):
    model, data = _model_and_data(name)
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.5, structure="coupled", scope=scope, seed=0,
        **tiny_options(method),
    )  # fmt: skip
    kept = _kept_per_block(masks)
    if scope == "local":
        sizes = [b.groups for b in masks.coupling.blocks]
        assert kept == [g - math.floor(0.5 * g) for g in sizes]
    masked = masks.apply(copy.deepcopy(model)).eval()
    small = slim_model(model, masks, data[0][0][:1])
    with torch.no_grad():
        torch.testing.assert_close(small(data[1][0]), masked(data[1][0]), rtol=1e-4, atol=1e-5)
    for block, count in zip(masks.coupling.blocks, kept, strict=True):
        for member in block.members:  # every producer lost exactly the pruned channels
            layer = small.get_submodule(member.name.rsplit(".", 1)[0])
            width = (
                layer.out_channels
                if isinstance(layer, nn.Conv1d | nn.Conv2d)
                else layer.out_features
            )
            assert width == count, member.name
    dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < dense


def test_residual_stage_channels_form_one_group_across_blocks():
    """ResNet-20's identity shortcuts join every block's last conv of a stage into one group."""
    model, data = _model_and_data("resnet20")
    masks = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="coupled")
    biggest = max(masks.coupling.blocks, key=lambda b: len(b.members))
    assert len(biggest.members) >= 3
    tied = {b for b, w in masks.tied_biases.items() if w in {m.name for m in biggest.members}}
    assert any(name.endswith("bn2.weight") or "bn" in name for name in tied)


def test_sfpk_prunes_coupled_channels_through_the_particle_engine():
    model, data = _model_and_data("cnn_digits")
    masks = sfpk.prune(
        model, data, method="sfpk", sparsity=0.5, structure="coupled", scope="local",
        **tiny_options("sfpk"),
    )  # fmt: skip
    sizes = [b.groups for b in masks.coupling.blocks]
    assert _kept_per_block(masks) == [g - math.floor(0.5 * g) for g in sizes]


def test_masks_ones_explains_that_coupled_needs_an_input():
    model, _ = _model_and_data("cnn_digits")
    with pytest.raises(ConfigError, match="coupled.*traces the model"):
        Masks.ones(model, structure="coupled")


def test_oneshot_with_coupled_channels_reports_slim_costs(tmp_path):
    """`sfpk oneshot --structure coupled`: summary.json carries the slim model's counts,
    below the masked model's nonzero ones (consumer columns go too)."""
    from sfpk.config.core import build_config
    from sfpk.pipelines import start

    overrides = {
        "data.dataset": "digits", "model.name": "cnn_digits", "pretrain.epochs": 1,
        "train.epochs": 1, "train.warmup_epochs": 0, "train.report_last_k": 1,
        "prune.method": "mag", "prune.structure": "coupled", "prune.scope": "local",
        "prune.sparsity": 0.5, "run.quiet": True, "run.device": "cpu", "run.plots": False,
        "run.out": str(tmp_path / "run"),
    }  # fmt: skip
    summary = start(build_config("oneshot", overrides=overrides))
    assert summary["slim_params"] < summary["nonzero_params"] < summary["params"]
    assert summary["slim_macs"] < summary["macs"]
