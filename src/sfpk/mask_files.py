"""Mask files: safetensors tensors plus a JSON header, written atomically, read with checks.

The header (safetensors metadata key ``"sfpk"``) records the format and version, the method,
target and achieved sparsity, structure, scope, the parameter shapes and tied biases, so a
file can be checked against a model (:meth:`sfpk.masks.Masks.check_fits`) without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .masks import Masks

__all__ = ["FORMAT", "FORMAT_VERSION", "header", "save_masks", "read_masks"]

FORMAT = "sfpk-masks"
FORMAT_VERSION = 1


def header(masks: Masks) -> dict[str, Any]:
    """The JSON header written with the tensors of ``masks``."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "method": masks.method,
        "target_sparsity": masks.target_sparsity,
        "achieved_sparsity": masks.sparsity(),
        "structure": masks.structure,
        "scope": masks.scope,
        "shapes": {n: list(s) for n, s in masks.shapes.items()},
        "tied_biases": masks.tied_biases,
    }


def save_masks(masks: Masks, path: str | os.PathLike) -> Path:
    """Write ``masks`` to a safetensors file: a temp file, then an atomic rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {n: m.detach().to("cpu").contiguous() for n, m in masks.items()}
    save_file(tensors, str(tmp), metadata={"sfpk": json.dumps(header(masks))})
    os.replace(tmp, path)
    return path


def read_masks(path: str | os.PathLike) -> Masks:
    """Read a mask file written by :func:`save_masks`.

    Raises:
        CheckpointError: missing, corrupted or foreign file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mask file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        info = json.loads(meta["sfpk"])
        if info.get("format") != FORMAT:
            raise ValueError("not an sfpk mask file")
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"cannot read mask file {str(path)!r}: {exc}") from exc
    return Masks(
        tensors,
        shapes=info["shapes"],
        structure=info["structure"],
        method=info.get("method"),
        target_sparsity=info.get("target_sparsity"),
        scope=info.get("scope"),
        tied_biases=info.get("tied_biases"),
    )
