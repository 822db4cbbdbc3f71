"""2:4 semi-structured sparsity on the GPU: ``torch.sparse.to_sparse_semi_structured``.

Masks of ``structure="2:4"`` keep 2 of every 4 consecutive input weights. NVIDIA GPUs of
compute capability 8.0 and newer (Ampere, Hopper) multiply such a weight at up to twice the
speed once it is converted to torch's compressed semi-structured tensor. Only linear layers
are converted (torch supports 2-D weights), on CUDA, in float16 or bfloat16, and only those
whose shape meets torch's size rules; others stay dense. Elsewhere the functions here raise
a :class:`ConfigError` that says why.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..masks.core import Masks

__all__ = [
    "SEMI_STRUCTURED",
    "check_semi_structured_support",
    "semi_structured_layers",
    "to_semi_structured_",
]

SEMI_STRUCTURED = "2:4"
_MIN_CAPABILITY = (8, 0)
_DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_layers(model: nn.Module, masks: Masks) -> list[str]:
    """Names of the linear-layer weights of ``model`` that carry a 2:4 mask.

    Raises:
        ConfigError: the masks are not ``2:4`` (the message names their structure), or no
            linear layer has a 2:4 mask.
    """
    if masks.structure != SEMI_STRUCTURED:
        raise ConfigError(
            f"semi-structured export needs structure={SEMI_STRUCTURED!r} masks; these have "
            f"structure={masks.structure!r} (GPUs accelerate only 2 kept of every 4)"
        )
    linear = {
        f"{n}.weight" if n else "weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }
    names = [n for n in masks if n in linear]
    if not names:
        raise ConfigError("no linear layer has a 2:4 mask; torch converts only linear weights")
    return names


def check_semi_structured_support(device: torch.device | str | None = None) -> torch.device:
    """The CUDA device to convert on, or a ConfigError saying why there is none.

    Raises:
        ConfigError: no CUDA GPU is available here, or its compute capability is below 8.0.
    """
    if not torch.cuda.is_available():
        raise ConfigError(
            "2:4 semi-structured conversion needs a CUDA GPU of compute capability 8.0 or "
            f"newer (Ampere, Hopper); this torch ({torch.__version__}) sees no CUDA device. "
            "Export without semi-structured conversion: the 2:4 masks are still stored"
        )
    device = torch.device(device or "cuda")
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        raise ConfigError(
            f"2:4 semi-structured conversion needs compute capability >= 8.0; "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}"
        )
    return device


def _fits(weight: torch.Tensor) -> bool:
    """Whether torch's semi-structured kernels accept this weight's shape and dtype."""
    from torch.sparse import SparseSemiStructuredTensor

    rules = SparseSemiStructuredTensor._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if rules is None:
        return False
    rows, cols = weight.shape
    return rows % rules.sparse_min_rows == 0 and cols % rules.sparse_min_cols == 0


@torch.no_grad()
def to_semi_structured_(model: nn.Module, names: list[str]) -> list[str]:
    """Mutates ``model``: converts the named linear weights to 2:4 semi-structured tensors.

    ``model`` must already be on a supported CUDA device in float16 or bfloat16 (see
    :func:`check_semi_structured_support`), with its 2:4 masks applied.

    Args:
        model: the model, on CUDA, half precision.
        names: linear weight names, e.g. from :func:`semi_structured_layers`.

    Returns:
        The names converted; weights whose shape torch does not accept stay dense.

    Raises:
        ConfigError: a weight is not on CUDA or not in float16/bfloat16.
    """
    from torch.sparse import to_sparse_semi_structured

    modules = dict(model.named_modules())
    done = []
    for name in names:
        module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        weight = module.weight
        if not weight.is_cuda or weight.dtype not in _DTYPES:
            raise ConfigError(
                f"{name} is {weight.dtype} on {weight.device}; semi-structured conversion "
                "needs float16 or bfloat16 on a CUDA device"
            )
        if _fits(weight):
            module.weight = nn.Parameter(to_sparse_semi_structured(weight.contiguous()))
            done.append(name)
    return done
