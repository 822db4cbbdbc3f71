"""Load model weights from safetensors or plain PyTorch state-dict files.

Nothing here unpickles arbitrary objects: ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["load_weights", "read_state_dict"]

_SHOWN = 5  # names listed per kind of mismatch


def _read_file(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save``-d file.

    A dict holding the weights under ``"state_dict"`` or ``"model"`` (a training checkpoint)
    is unwrapped, and a leading ``module.`` (DataParallel / DDP) is stripped from the names.

    Args:
        path: File to read.

    Returns:
        Parameter and buffer names mapped to CPU tensors.

    Raises:
        CheckpointError: If the file is missing, corrupted or holds no tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    state = _read_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: expected a dict of name -> tensor (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _mismatch_message(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    # Older checkpoints lack BN's num_batches_tracked; that is not worth refusing a file.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = sorted(k for k in state if k not in expected)  # file order is arbitrary
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{', ...' if len(items) > _SHOWN else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", shapes),
        )
        if items
    ]
    return "; ".join(parts) or None


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights from ``path`` into ``model`` in place (mutates ``model``).

    Accepts a safetensors file of a state dict (as written by
    ``safetensors.torch.save_file(model.state_dict(), path)``) and a ``.pt``/``.pth`` file
    of a state dict, optionally wrapped under ``"state_dict"`` or ``"model"``.

    Args:
        model: The model to fill; its architecture must match the file.
        path: Weights file.

    Returns:
        ``model``, for chaining.

    Raises:
        CheckpointError: If the file is missing or corrupted, or its names/shapes do not
            match the model (the message lists a few of each kind).

    Example:
        >>> model = load_weights(create("resnet20", num_classes=100), "resnet20.safetensors")
    """
    state = read_state_dict(path)
    problem = _mismatch_message(model, state)
    if problem is not None:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=False)
    return model
