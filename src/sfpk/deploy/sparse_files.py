"""Model weight files: a safetensors state dict whose pruned tensors may be stored compressed.

One safetensors file, no pickle. A tensor is stored either as it is (under its own name) or,
when it is named in ``sparse_names`` and that is smaller, as its kept values plus where they
sit::

    name::values   the entries whose bits are not all zero, in row-major order (1-D, same dtype)
    name::bits     a packed bitmask, 1 bit per entry (uint8, little-endian bit order), or
    name::indices  the flat row-major positions of those entries (int32, increasing)

Per tensor, the smaller of the two (or the plain tensor, if neither is smaller) is chosen:
with ``n`` entries of ``b`` bytes of which ``k`` are kept, ``bits`` costs ``k*b + n/8``
bytes, ``indices`` ``k*b + 4k`` and ``dense`` ``n*b``, so ``indices`` wins below a density
of 1/32. "Kept" means the entry's *bits* are non-zero, so ``-0.0`` (and NaN) are kept as
values and the round trip is bit-exact; the restored zeros are ``+0.0``.

The JSON header (safetensors metadata key ``"sfpk"``) records the format and version, each
compressed tensor's encoding, shape and dtype, and whatever the caller adds (the model's
architecture, see :mod:`sfpk.deploy.export`). This module knows tensors and dicts only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ENCODINGS",
    "SEPARATOR",
    "choose_encoding",
    "encode_tensor",
    "decode_tensor",
    "write_weights_file",
    "read_weights_file",
]

FORMAT = "sfpk-model"
FORMAT_VERSION = 1
ENCODINGS: tuple[str, ...] = ("dense", "bits", "indices")
SEPARATOR = "::"
_MAX_INDEX = 2**31 - 1


def _kept(tensor: Tensor) -> Tensor:
    """Flat bool tensor: True where the entry's bits are not all zero (so -0.0 counts)."""
    flat = tensor.reshape(-1)
    if flat.dtype == torch.bool:
        return flat
    if flat.is_floating_point() or flat.is_complex():
        size = flat.element_size()
        return flat.view(torch.uint8).reshape(flat.numel(), size).ne(0).any(dim=1)
    return flat.ne(0)


def choose_encoding(numel: int, kept: int, itemsize: int) -> str:
    """The smallest of ``dense``, ``bits`` and ``indices`` for ``kept`` of ``numel`` entries.

    Ties go to the simpler encoding (dense, then bits).
    """
    sizes = {
        "dense": numel * itemsize,
        "bits": kept * itemsize + math.ceil(numel / 8),
        "indices": kept * itemsize + 4 * kept if numel <= _MAX_INDEX else math.inf,
    }
    return min(ENCODINGS, key=lambda name: sizes[name])


def encode_tensor(tensor: Tensor) -> tuple[str, dict[str, Tensor]]:
    """Encode one tensor: ``(encoding, {suffix: tensor})``; suffix ``""`` for dense."""
    tensor = tensor.detach().to("cpu").contiguous()
    kept = _kept(tensor)
    count = int(kept.sum())
    encoding = choose_encoding(tensor.numel(), count, tensor.element_size())
    if encoding == "dense":
        return encoding, {"": tensor.clone()}
    values = tensor.reshape(-1)[kept].clone()
    if encoding == "bits":
        packed = np.packbits(kept.numpy(), bitorder="little")
        return encoding, {"values": values, "bits": torch.from_numpy(packed)}
    positions = torch.nonzero(kept).reshape(-1).to(torch.int32)
    return encoding, {"values": values, "indices": positions}


def decode_tensor(
    encoding: str, parts: Mapping[str, Tensor], shape: tuple[int, ...], dtype: torch.dtype
) -> Tensor:
    """The dense tensor of :func:`encode_tensor`'s output (checks the parts; ValueError)."""
    numel = math.prod(shape)
    values = parts["values"]
    if values.dim() != 1 or values.dtype != dtype:
        raise ValueError(f"values must be 1-D {dtype}, got {tuple(values.shape)} {values.dtype}")
    out = torch.zeros(numel, dtype=dtype)
    if encoding == "bits":
        bits = parts["bits"]
        if bits.dtype != torch.uint8 or tuple(bits.shape) != (math.ceil(numel / 8),):
            raise ValueError(f"bits must be {math.ceil(numel / 8)} uint8, got {tuple(bits.shape)}")
        unpacked = np.unpackbits(bits.numpy(), bitorder="little")
        if unpacked[numel:].any():
            raise ValueError("bits beyond the tensor's end are set")
        kept = torch.from_numpy(unpacked[:numel].astype(bool))
        if int(kept.sum()) != values.numel():
            raise ValueError(f"{int(kept.sum())} bits set but {values.numel()} values")
        out[kept] = values
    elif encoding == "indices":
        indices = parts["indices"]
        if indices.dtype != torch.int32 or tuple(indices.shape) != (values.numel(),):
            raise ValueError(f"indices must be {values.numel()} int32, got {tuple(indices.shape)}")
        positions = indices.to(torch.int64)
        if positions.numel() and (
            int(positions.min()) < 0
            or int(positions.max()) >= numel
            or bool((positions[1:] <= positions[:-1]).any())
        ):
            raise ValueError("indices out of range or not increasing")
        out[positions] = values
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    return out.reshape(shape)


def write_weights_file(
    path: str | os.PathLike,
    state: Mapping[str, Tensor],
    header: Mapping[str, Any],
    *,
    sparse_names: Collection[str] = (),
) -> Path:
    """Write ``state`` (names -> tensors) with its JSON ``header``, atomically.

    Args:
        path: the ``.safetensors`` file to write.
        state: a state dict; names may not contain ``"::"``.
        header: JSON-able facts stored with the tensors (format, version and encodings added).
        sparse_names: tensors that may be stored compressed (each gets the smallest encoding).

    Returns:
        ``path``.

    Raises:
        ConfigError: a name contains ``"::"`` or ``sparse_names`` names a missing tensor.
    """
    from safetensors.torch import save_file

    bad = [n for n in state if SEPARATOR in n]
    if bad:
        raise ConfigError(f"tensor names may not contain {SEPARATOR!r}: {bad[:3]}")
    missing = sorted(set(sparse_names) - set(state))
    if missing:
        raise ConfigError(f"sparse_names names tensors the state lacks: {missing[:3]}")
    tensors: dict[str, Tensor] = {}
    encodings: dict[str, dict[str, Any]] = {}
    for name, tensor in state.items():
        encoding, parts = (
            encode_tensor(tensor)
            if name in sparse_names and tensor.is_floating_point()
            else ("dense", {"": tensor.detach().to("cpu").contiguous().clone()})
        )
        for suffix, part in parts.items():
            tensors[f"{name}{SEPARATOR}{suffix}" if suffix else name] = part
        if encoding != "dense":
            encodings[name] = {
                "encoding": encoding,
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
            }
    info = {**header, "format": FORMAT, "version": FORMAT_VERSION, "encodings": encodings}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"sfpk": json.dumps(info)})
    os.replace(tmp, path)
    return path


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The dense state dict and the header of a file written by :func:`write_weights_file`.

    A plain safetensors state dict (no ``"sfpk"`` header, e.g. a run's ``model.safetensors``)
    is read as it is, with an empty header.

    Raises:
        CheckpointError: missing, corrupted or foreign file (a mask file, say).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            raw = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        info = json.loads(meta["sfpk"]) if "sfpk" in meta else {}
        if info and info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r} is not an sfpk model file")
        state = _decode_all(raw, info.get("encodings", {}))
    except Exception as exc:  # safetensors and json raise several unrelated types
        raise CheckpointError(f"cannot read model file {str(path)!r}: {exc}") from exc
    return state, info


def _decode_all(raw: dict[str, Tensor], encodings: Mapping[str, Any]) -> dict[str, Tensor]:
    state = {k: v for k, v in raw.items() if SEPARATOR not in k}
    used = set(state)
    for name, spec in encodings.items():
        encoding = spec["encoding"]
        suffixes = ("values", "bits" if encoding == "bits" else "indices")
        keys = [f"{name}{SEPARATOR}{s}" for s in suffixes]
        absent = [k for k in keys if k not in raw]
        if absent:
            raise ValueError(f"tensor {name!r} ({encoding}) lacks {', '.join(absent)}")
        parts = {s: raw[k] for s, k in zip(suffixes, keys, strict=True)}
        try:
            state[name] = decode_tensor(
                encoding, parts, tuple(spec["shape"]), _dtype(spec["dtype"])
            )
        except ValueError as exc:
            raise ValueError(f"tensor {name!r}: {exc}") from None
        used.update(keys)
    stray = sorted(set(raw) - used)
    if stray:
        raise ValueError(f"tensors not described by the header: {stray[:3]}")
    return state
