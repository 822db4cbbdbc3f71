"""fold_batchnorm: same outputs, no foldable BatchNorm left, the input model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sfpk.deploy.inference import fold_batchnorm
from sfpk.deploy.slim import slim_model
from sfpk.errors import ConfigError, SfpkError
from sfpk.masks.core import Masks
from sfpk.models import create

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_statistics_(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms: a fresh BatchNorm is the identity
    in eval mode, so folding it would prove nothing."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))
    return model


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return _random_statistics_(create("resnet20", num_classes=10))


def test_folded_resnet_has_no_batchnorm_and_the_same_outputs():
    """Every conv -> BN pair of a ResNet folds, and the function stays the same in fp32."""
    model = _resnet20()
    x = torch.randn(8, 3, 32, 32)
    folded = fold_batchnorm(model, x[:2])
    assert _batchnorms(model) == 21 and _batchnorms(folded) == 0  # stem, 18 in blocks, 2 shortcuts
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_folding_leaves_the_input_model_unchanged():
    """The caller's model keeps its BatchNorms, weights and training mode."""
    model = _resnet20().train()
    before = copy.deepcopy(model.state_dict())
    fold_batchnorm(model)
    assert model.training and _batchnorms(model) == 21
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_slim_model_folds_too():
    """The slim model of a structured-pruned ResNet (fewer, odd channel counts) folds exactly."""
    model = _resnet20().eval()
    masks = Masks.ones(model, structure="filter")
    conv = "layer1.0.conv1.weight"
    tensors = {n: t.clone() for n, t in masks.items()}
    tensors[conv][:5] = 0  # an inner conv of a block: slimmable on its own
    x = torch.randn(4, 3, 32, 32)
    slim = slim_model(model, masks.with_tensors(tensors), x[:2])
    assert slim.get_submodule("layer1.0.conv1").out_channels < 16
    folded = fold_batchnorm(slim, x[:2])
    assert _batchnorms(folded) == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x), slim(x), atol=1e-4, rtol=1e-4)


class _Branching(nn.Module):
    """conv -> BN, but the conv output is also read directly; then linear -> BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)
        self.bn_fc = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.bn(h) + h
        return self.bn_fc(self.fc(h.mean((2, 3))))


def test_a_batchnorm_whose_input_is_read_elsewhere_is_kept():
    """Folding would change the other reader's input, so that BN stays; linear -> BN1d folds."""
    model = _random_statistics_(_Branching())
    x = torch.randn(5, 3, 8, 8)
    folded = fold_batchnorm(model, x)
    names = {n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert names == {"bn"}
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


class _TokenLinearBN(nn.Module):
    """Linear on [N, L, C] tokens then BatchNorm1d over dim 1 (L == C, so the sizes agree)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_linear_batchnorm_folds_only_on_a_2d_output_shown_by_an_example():
    """On [N, L, C] a Linear's features are not BatchNorm1d's channels: never folded there;
    a 2-D linear -> BN1d folds only when the example input shows the output is 2-D."""
    tokens = _random_statistics_(_TokenLinearBN())
    x = torch.randn(3, 4, 4)
    for example in (x, None):
        folded = fold_batchnorm(tokens, example)
        assert _batchnorms(folded) == 1
        with torch.no_grad():
            torch.testing.assert_close(folded(x), tokens.eval()(x), atol=1e-5, rtol=1e-4)
    branching = _random_statistics_(_Branching())
    assert _batchnorms(fold_batchnorm(branching)) == 2  # no example: the linear's BN stays


class _SharedConv(nn.Module):
    """One conv called twice, each call followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv(self.bn_a(self.conv(x))))


def test_a_conv_called_twice_is_not_folded():
    """Folding one call's BatchNorm into a shared conv would change its other call."""
    model = _random_statistics_(_SharedConv())
    x = torch.randn(2, 3, 6, 6)
    folded = fold_batchnorm(model, x)
    assert _batchnorms(folded) == 2
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def test_batchnorm_without_running_statistics_is_kept():
    """It normalises by the batch even in eval mode: not a fixed affine map, not foldable."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    folded = fold_batchnorm(model)
    assert _batchnorms(folded) == 1


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_is_a_config_error_naming_it():
    """Data-dependent control flow defeats torch.fx: say so, with the model's class."""
    with pytest.raises(ConfigError, match="_DataDependent.*torch.fx|torch.fx.*_DataDependent"):
        fold_batchnorm(_DataDependent())


def test_output_check_raises_when_the_folded_model_differs(monkeypatch):
    """A wrong fold must not pass silently when an example input is given."""
    import sfpk.deploy.inference as inference

    def broken(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        fused = copy.deepcopy(conv)
        fused.weight.data.mul_(2)
        return fused

    monkeypatch.setattr(inference, "fuse_conv_bn_eval", broken)
    with pytest.raises(SfpkError, match="BatchNorm-folded model's output differs"):
        fold_batchnorm(_resnet20(), torch.randn(2, 3, 32, 32))
