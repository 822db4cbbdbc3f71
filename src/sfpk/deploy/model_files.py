"""The exported model file: its names, the :class:`Architecture` its header records, and
reading it back (:func:`read_weights`, :func:`load_model`).

``model.safetensors`` (written by :func:`sfpk.deploy.export.export`) holds the state dict with the
masks baked in; its header (safetensors metadata ``"sfpk"``) records the
:class:`Architecture` (zoo model name, options, ``num_classes``, ``input_shape``), so
:func:`load_model` needs nothing else. Compressed tensors (:mod:`sfpk.deploy.sparse_files`) are
read back bit-exact; a slimmed file (``"slimmed": true``) resizes the rebuilt architecture
to the file's shapes (:func:`sfpk.deploy.slim_resize.resize_to_state_`). The format is described in
``docs/export.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import models
from ..errors import CheckpointError, SfpkError
from .slim_resize import resize_to_state_
from .sparse_files import read_weights_file

__all__ = [
    "MODEL_FILE",
    "MASKS_FILE",
    "ONNX_FILE",
    "Architecture",
    "load_model",
    "read_weights",
]

MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Architecture:
    """How to rebuild a zoo model: ``sfpk.models.create(name, num_classes=..., ...)``.

    Attributes:
        name: a name of :func:`sfpk.models.list_models` (or ``tv:`` / ``timm:`` ``<name>``).
        num_classes: number of output classes.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``; None for the model's
            natural input.
        options: the builder's options, e.g. ``{"hidden": [32]}`` for ``mlp``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture (see :func:`sfpk.models.create`)."""
        return models.create(
            self.name, num_classes=self.num_classes, input_shape=self.input_shape, **self.options
        )

    def to_header(self) -> dict[str, Any]:
        """This architecture as JSON-able data."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "options": dict(self.options),
        }

    @classmethod
    def from_header(cls, info: Any) -> Architecture:
        """Read :meth:`to_header`'s output back (ValueError if it is malformed)."""
        if not isinstance(info, dict) or not isinstance(info.get("name"), str):
            raise ValueError(f"malformed architecture record {info!r}")
        shape = info.get("input_shape")
        options = info.get("options") or {}
        if not isinstance(info.get("num_classes"), int) or not isinstance(options, dict):
            raise ValueError(f"malformed architecture record {info!r}")
        return cls(
            name=info["name"],
            num_classes=info["num_classes"],
            input_shape=None if shape is None else tuple(int(s) for s in shape),
            options=options,
        )


def _model_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The dense state dict of an exported file (compressed or not) or a plain safetensors file.

    Args:
        path: a ``model.safetensors`` file, or the folder :func:`export` wrote.

    Raises:
        CheckpointError: missing, corrupted or foreign file.
    """
    return read_weights_file(_model_file(path))[0]


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild an exported model from its file alone, in eval mode.

    Args:
        path: a ``model.safetensors`` written by :func:`export`, or its folder.

    Returns:
        The model of the recorded architecture with the file's weights (and the file's
        floating dtype, if that is not float32), in eval mode.

    Raises:
        CheckpointError: the file is missing or corrupted, records no architecture (weights
            only) or an unknown one, or its weights do not fit that architecture.
    """
    file = _model_file(path)
    state, info = read_weights_file(file)
    if info.get("architecture") is None:
        raise CheckpointError(
            f"{str(file)!r} has weights only (no architecture recorded): build the model "
            f"yourself and load them with sfpk.models.load_weights(model, path)"
            + (
                ", or model.load_state_dict(sfpk.read_weights(path)) for its compressed tensors"
                if info.get("encodings")
                else ""
            )
        )
    try:
        architecture = Architecture.from_header(info["architecture"])
        model = architecture.build()
    except (ValueError, SfpkError) as exc:  # UnknownNameError / ConfigError are ValueErrors
        raise CheckpointError(f"{str(file)!r}: cannot rebuild its architecture: {exc}") from exc
    if info.get("slimmed"):
        resize_to_state_(model, state)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1 and dtypes != {torch.float32}:
        model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{str(file)!r}: the weights do not fit architecture {architecture.name!r}: {detail}"
        ) from exc
    return model.eval()
