"""The paper's setting in miniature: one-shot SFPK on (fake) CIFAR-100 with ResNet-20."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sfpk.cli import main
from sfpk.data.fake import write_fake_cifar
from sfpk.masks.core import Masks
from sfpk.models import create


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A fake CIFAR-100 (python-pickle layout), 3 training images per class."""
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar(root, 100, 3, test_per_class=1)
    return root


def _flags(cifar_root, out, *extra):
    return [
        "oneshot", "--data", "cifar100", "--data-dir", str(cifar_root), "--model", "resnet20",
        "--method", "sfpk", "--sparsity", "0.9", "--option", "num_steps=2",
        "--option", "num_particles=2", "--prune-batch-size", "64", "--batch-size", "64",
        "--epochs", "1", "--warmup-epochs", "0", "--report-last-k", "1", "--quiet",
        "--device", "cpu", "--no-plots", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow  # a full pipeline on ResNet-20 / 100 classes
def test_one_epoch_sfpk_oneshot_on_fake_cifar100_resnet20(cifar_root, tmp_path):
    """Pretrain 1 epoch, SFPK to 90 % removed, fine-tune 1 epoch; files and sparsity check out."""
    out = tmp_path / "run"
    assert main(_flags(cifar_root, out, "--pretrain-epochs", "1")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "sfpk"
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-5)
    model = create("resnet20", num_classes=100)
    masks = Masks.load(out / "masks.safetensors", model)
    assert masks.total_weights() == 276_656  # conv + linear weights of ResNet-20/100
    assert (out / "sfpk_steps.csv").read_text().count("\n") == 3  # header + 2 steps


@pytest.mark.slow  # a full pipeline on ResNet-20 / 100 classes
def test_oneshot_starts_from_a_plain_torch_state_dict(cifar_root, tmp_path):
    """--checkpoint accepts a torch state dict and skips pretraining."""
    model = create("resnet20", num_classes=100)
    path = tmp_path / "dense.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "run"
    assert main(_flags(cifar_root, out, "--checkpoint", str(path))) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-5)


def test_checkpoint_of_another_architecture_is_a_clear_error(cifar_root, tmp_path, capsys):
    """A ResNet-32 checkpoint given for ResNet-20: exit 2 naming mismatched parameters."""
    other = create("resnet32", num_classes=100)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    assert main(_flags(cifar_root, tmp_path / "run", "--checkpoint", str(path))) == 2
    err = capsys.readouterr().err
    assert "sfpk: error:" in err and "Traceback" not in err
