"""Rebuilding a slim model without torch-pruning: :func:`resize_to_state_` gives a freshly
built architecture the layer widths of a slim state dict (:mod:`sfpk.deploy.slim` made it), so that
:func:`sfpk.load_model` can load it. Also the conv kinds slimming knows, shared with
:mod:`sfpk.deploy.slim`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

__all__ = ["CONV_TYPES", "is_depthwise", "resize_to_state_"]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise conv (one group per channel, as many out as in)."""
    return (
        isinstance(module, CONV_TYPES)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _resize_conv(module: nn.Module, weight: Sequence[int]) -> None:
    depthwise = is_depthwise(module)
    if module.groups > 1 and not depthwise:
        raise CheckpointError(f"cannot resize grouped conv {module} to weight {list(weight)}")
    module.out_channels = weight[0]
    module.in_channels = weight[0] if depthwise else weight[1]
    if depthwise:
        module.groups = weight[0]


def resize_to_state_(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Mutates ``model``: resizes its conv, linear and BatchNorm layers to ``state``'s shapes.

    This rebuilds a slim model from a freshly built architecture and the slim state dict
    (no torch-pruning needed): each layer whose tensors in ``state`` have other shapes gets
    new, uninitialised tensors of those shapes and matching ``in/out_channels``,
    ``in/out_features``, ``groups`` or ``num_features``. Load the state dict afterwards.

    Returns:
        The names of the resized layers.

    Raises:
        CheckpointError: a layer of another kind (or a grouped conv) would need resizing.
    """
    resized = []
    for prefix, module in model.named_modules():
        own = {
            n: t
            for n, t in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]
            if t is not None
        }
        key = f"{prefix}." if prefix else ""
        changed = {
            n for n, t in own.items() if key + n in state and state[key + n].shape != t.shape
        }
        if not changed:
            continue
        if isinstance(module, CONV_TYPES):
            _resize_conv(module, state[key + "weight"].shape)
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = state[key + "weight"].shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = state[key + "running_mean"].shape[0]
        else:
            raise CheckpointError(
                f"layer {prefix!r} ({type(module).__name__}) has tensors of other shapes in the "
                f"file ({sorted(changed)}); only conv, linear and BatchNorm layers are resized"
            )
        for name in changed:
            new = torch.empty(state[key + name].shape, dtype=own[name].dtype)
            if isinstance(own[name], nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=own[name].requires_grad))
            else:
                setattr(module, name, new)
        resized.append(prefix)
    return resized
