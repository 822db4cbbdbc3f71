"""Seeds, random-number-generator states and atomic checkpoints of a run.

A checkpoint is one folder ``checkpoints/ckpt-NNNNNN/`` holding ``model.safetensors`` (the
model's full state dict: weights and buffers such as BatchNorm statistics),
``masks.safetensors`` (when the run has masks) and ``state.pt`` (everything else: optimizer,
RNG states, phase / round / epoch, pruner engine state, partial results). It is written into
a temporary folder that is renamed into place, and ``checkpoints/LATEST`` (replaced
atomically) names the newest complete one, so a process killed at any instant leaves either
the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .masks import Masks

__all__ = [
    "Checkpoint",
    "derive_seed",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "save_state_dict",
    "load_state_dict_file",
    "write_checkpoint",
    "read_latest_checkpoint",
]

_LATEST = "LATEST"


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed determined by ``seed`` and ``keys`` (e.g. phase, round, epoch).

    Deriving every stream from its position in the run (not from a global RNG that has been
    advanced by whatever ran before) is what makes a resumed run replay the same numbers.
    """
    text = "/".join(str(part) for part in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and every CUDA device) generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state_dict(module_or_state: nn.Module | dict[str, Tensor], path: str | Path) -> Path:
    """Write a model's state dict (weights and buffers) to safetensors, atomically."""
    from safetensors.torch import save_file

    state = (
        module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    )
    # clone() breaks storage sharing (tied weights), which safetensors refuses to write.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors state dict written by :func:`save_state_dict`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {exc}") from exc


@dataclass
class Checkpoint:
    """A checkpoint read back: the model state dict, the masks (or None) and ``state.pt``."""

    model_state: dict[str, Tensor]
    masks: Masks | None
    state: dict[str, Any]
    path: Path


def write_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    masks: Masks | None,
    state: dict[str, Any],
) -> Path:
    """Write a new checkpoint under ``directory`` atomically and drop the older ones.

    Args:
        directory: the run's ``checkpoints/`` folder.
        model: its state dict goes to ``model.safetensors``.
        masks: saved to ``masks.safetensors`` when not None.
        state: everything else (picklable), saved with ``torch.save``.

    Returns:
        The folder of the new checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _latest_name(directory)
    number = int(previous.split("-")[1]) + 1 if previous else 0
    final = directory / f"ckpt-{number:06d}"
    tmp = directory / f".tmp-{number:06d}"
    for stale in (tmp, final):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    save_state_dict(model, tmp / "model.safetensors")
    if masks is not None:
        masks.save(tmp / "masks.safetensors")
    torch.save(state, tmp / "state.pt")
    os.replace(tmp, final)
    pointer = directory / (_LATEST + ".tmp")
    pointer.write_text(final.name + "\n")
    os.replace(pointer, directory / _LATEST)
    for old in directory.glob("ckpt-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _latest_name(directory: Path) -> str | None:
    pointer = directory / _LATEST
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def read_latest_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``directory``, or None if there is none.

    ``state.pt`` is loaded with ``weights_only=False`` (it holds NumPy and Python RNG
    states): only resume run folders you created.

    Raises:
        CheckpointError: the checkpoint named by ``LATEST`` is missing or unreadable.
    """
    directory = Path(directory)
    name = _latest_name(directory)
    if name is None:
        return None
    folder = directory / name
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {str(folder)!r}: {exc}") from exc
    mask_file = folder / "masks.safetensors"
    masks = Masks.load(mask_file) if mask_file.is_file() else None
    return Checkpoint(
        model_state=load_state_dict_file(folder / "model.safetensors"),
        masks=masks,
        state=state,
        path=folder,
    )
