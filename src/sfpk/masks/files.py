"""Mask files: safetensors tensors plus a JSON header, written atomically, read with checks.

The header (safetensors metadata key ``"sfpk"``) records the format and version and what
:meth:`sfpk.masks.core.Masks.header` gives: method, target and achieved sparsity, structure,
scope, ``round_to``, the parameter shapes and tied biases, so a file can be checked against
a model (:meth:`sfpk.masks.core.Masks.check_fits`) and its selection rules without it. This
module knows the file, not :class:`~sfpk.masks.core.Masks`, which builds on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import CheckpointError

__all__ = ["FORMAT", "FORMAT_VERSION", "write_mask_file", "read_mask_file"]

FORMAT = "sfpk-masks"
FORMAT_VERSION = 1


def write_mask_file(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], header: Mapping[str, Any]
) -> Path:
    """Write mask ``tensors`` and their JSON ``header`` (format and version added):
    a temp file, then an atomic rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    info = {"format": FORMAT, "version": FORMAT_VERSION, **header}
    cpu = {n: m.detach().to("cpu").contiguous() for n, m in tensors.items()}
    save_file(cpu, str(tmp), metadata={"sfpk": json.dumps(info)})
    os.replace(tmp, path)
    return path


def read_mask_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and header of a file written by :func:`write_mask_file`.

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
        for key in ("shapes", "structure"):
            if key not in info:
                raise ValueError(f"the header has no {key!r}")
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"cannot read mask file {str(path)!r}: {exc}") from exc
    return tensors, info
