"""Hook-free masked forward/backward: agreement with a baked copy, mask and weight gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import MODELS, conv_bn_net, mlp, random_batches
from sfpk.masks.core import Masks, reduce_to_mask
from sfpk.masks.functional import effective_weight_grads, masked_forward


def _random_masks(model: nn.Module, structure: str, seed: int = 0) -> Masks:
    masks = Masks.ones(model, structure=structure)
    gen = torch.Generator().manual_seed(seed)
    return masks.with_tensors(
        {n: (torch.rand(m.shape, generator=gen) < 0.6).to(m.dtype) for n, m in masks.items()}
    )


def _baked(model: nn.Module, masks: Masks) -> nn.Module:
    """A deep copy with w*m written into the masked weights (biases untouched)."""
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    return twin


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
@pytest.mark.parametrize("model_name", ["mlp", "conv_bn", "conv1d"])
def test_masked_forward_equals_baked_copy(model_name, structure):
    """The functional forward must compute exactly the network the masks describe."""
    factory, shape, classes = MODELS[model_name]
    model = factory().eval()
    masks = _random_masks(model, structure)
    x = random_batches(shape, classes, count=1)[0][0]
    expected = _baked(model, masks)(x)
    torch.testing.assert_close(masked_forward(model, masks, x), expected, rtol=0, atol=1e-6)


def test_masked_forward_does_not_modify_parameters():
    """Forwarding and backpropagating through masks must leave the weights untouched."""
    model = conv_bn_net().eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = _random_masks(model, "unstructured")
    x, y = random_batches((3, 8, 8), 4, count=1)[0]
    leaves = {n: m.clone().requires_grad_(True) for n, m in masks.items()}
    F.cross_entropy(masked_forward(model, leaves, x), y).backward()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_masked_forward_params_override_weights():
    """params= substitutes (e.g. float64) weights for the model's own ones."""
    model = mlp(bias=False)
    masks = _random_masks(model, "unstructured")
    doubled = {n: 2 * p.detach().double() for n, p in model.named_parameters()}
    x = random_batches((12,), 3, count=1)[0][0].double()
    out = masked_forward(model, {n: m.double() for n, m in masks.items()}, x, params=doubled)
    # Three bias-free linear layers and ReLU: doubling every weight scales the logits by 8.
    expected = 8 * masked_forward(model, masks, x.float()).double()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
@pytest.mark.parametrize("model_name", ["mlp", "conv_bn"])
def test_mask_gradient_is_weight_gradient_times_theta(model_name, structure):
    """dL/dm = reduce(dL/dw_eff * theta): the identity every gradient-based score relies on."""
    factory, shape, classes = MODELS[model_name]
    model = factory().eval()
    masks = _random_masks(model, structure)
    x, y = random_batches(shape, classes, count=1)[0]
    leaves = {n: m.clone().requires_grad_(True) for n, m in masks.items()}
    F.cross_entropy(masked_forward(model, leaves, x), y).backward()
    baked = _baked(model, masks)
    F.cross_entropy(baked(x), y).backward()
    params = dict(model.named_parameters())
    for name, baked_param in baked.named_parameters():
        if name not in masks:
            continue
        expected = reduce_to_mask(baked_param.grad * params[name].detach(), masks[name].shape)
        torch.testing.assert_close(leaves[name].grad, expected, rtol=1e-5, atol=1e-7)


def test_effective_weight_grads_match_autograd_on_baked_copy():
    """Gradients w.r.t. effective weights equal a plain backward through the baked network."""
    model = conv_bn_net().eval()
    masks = _random_masks(model, "unstructured")
    params = dict(model.named_parameters())
    effective = {n: params[n].detach() * m for n, m in masks.items()}
    x, y = random_batches((3, 8, 8), 4, count=1)[0]
    loss, grads = effective_weight_grads(model, effective, x, y, F.cross_entropy)
    baked = _baked(model, masks)
    expected_loss = F.cross_entropy(baked(x), y)
    expected_loss.backward()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert list(grads) == list(masks)
    baked_params = dict(baked.named_parameters())
    for name in masks:
        torch.testing.assert_close(grads[name], baked_params[name].grad, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_effective_weight_grads_zero_for_unused_tensor():
    """A given tensor that does not reach the loss gets a zero gradient, not None."""

    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(12, 3)
            self.spare = nn.Linear(12, 3)

        def forward(self, x):
            return self.used(x)

    model = WithSpare()
    x, y = random_batches((12,), 3, count=1)[0]
    effective = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    _, grads = effective_weight_grads(model, effective, x, y, F.cross_entropy)
    assert torch.equal(grads["spare.weight"], torch.zeros(3, 12))
    assert grads["used.weight"].abs().sum().item() > 0
