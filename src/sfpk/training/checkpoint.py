"""Seeds, random-number-generator states and atomic checkpoints of a run.

A checkpoint is one folder ``checkpoints/ckpt-NNNNNN/`` holding ``model.safetensors`` (the
model's full state dict: weights and buffers such as BatchNorm statistics),
``masks.safetensors`` (when the run has masks) and ``state.pt`` (everything else: optimizer,
RNG states, phase / round / epoch, pruner engine state, partial results). It is written into
a temporary folder that is renamed into place, and ``checkpoints/LATEST`` (replaced
atomically) names the newest complete one, so a process killed at any instant leaves either
the old or the new checkpoint, never a torn one. The last two are kept, each with the SHA-256
of its files (``checksums.json``): a newest one damaged on disk after the fact is detected
on reading, and the previous one is used instead, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..masks.core import Masks

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
    "checkpoint_names",
    "discard_skipped",
]

log = logging.getLogger(__name__)

_LATEST = "LATEST"
_CHECKSUMS = "checksums.json"


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
    """Read a safetensors state dict written by :func:`save_state_dict`; every floating
    tensor must be finite (CheckpointError names the first that is not)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"weights file {str(path)!r} holds NaN or inf in {name!r}; it cannot be used"
            )
    return tensors


@dataclass
class Checkpoint:
    """A checkpoint read back: the model state dict, the masks (or None) and ``state.pt``.

    ``skipped`` names the newer checkpoints that failed their check and were passed over
    (see :func:`read_latest_checkpoint`); :func:`discard_skipped` sets them aside.
    """

    model_state: dict[str, Tensor]
    masks: Masks | None
    state: dict[str, Any]
    path: Path
    skipped: list[str] = field(default_factory=list)


def write_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    masks: Masks | None,
    state: dict[str, Any],
) -> Path:
    """Write a new checkpoint under ``directory`` atomically; keep it and the previous one.

    Every file's SHA-256 goes to ``checksums.json`` in the folder, checked when it is read.

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
    sums = {file.name: _sha256(file) for file in sorted(tmp.iterdir())}
    (tmp / _CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n")
    os.replace(tmp, final)
    pointer = directory / (_LATEST + ".tmp")
    pointer.write_text(final.name + "\n")
    os.replace(pointer, directory / _LATEST)
    for old in directory.glob("ckpt-*"):
        if old.name not in (final.name, previous):  # the last two stay
            shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _latest_name(directory: Path) -> str | None:
    pointer = directory / _LATEST
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def checkpoint_names(directory: str | Path) -> list[str]:
    """The checkpoint folders under ``directory``, oldest first."""
    directory = Path(directory)
    return sorted(p.name for p in directory.glob("ckpt-*") if p.is_dir())


def read_latest_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The newest sound checkpoint under ``directory``, or None if there is none.

    The checkpoint ``LATEST`` names is checked (checksums, readable files, finite weights);
    if it fails, the one before it is read instead, with a warning, and the failed one is
    listed in ``Checkpoint.skipped``. ``state.pt`` is loaded with ``weights_only=False`` (it
    holds NumPy and Python RNG states): only resume run folders you created.

    Raises:
        CheckpointError: ``LATEST`` is empty or names a missing folder (the message lists
            the checkpoints that exist), or no checkpoint passes its check.
    """
    directory = Path(directory)
    pointer = directory / _LATEST
    if not pointer.is_file():
        return None
    existing = checkpoint_names(directory)
    listing = ", ".join(existing) or "none"
    name = pointer.read_text().strip()
    if not name:
        raise CheckpointError(
            f"{str(pointer)!r} is empty; checkpoints in that folder: {listing} (write the "
            "name of one into LATEST to resume from it, or start over with --overwrite)"
        )
    if name not in existing:
        raise CheckpointError(
            f"cannot read checkpoint {str(directory / name)!r}: {str(pointer)!r} names it but "
            f"it does not exist; checkpoints in that folder: {listing}"
        )
    candidates = [n for n in reversed(existing) if n <= name][:2]  # LATEST, then the one before
    failures: list[str] = []
    for candidate in candidates:
        try:
            checkpoint = _read_folder(directory / candidate)
        except CheckpointError as exc:
            failures.append(str(exc))
            continue
        if failures:
            log.warning(
                "checkpoint %s failed its check (%s); falling back to the previous one, %s",
                name, failures[0], candidate,
            )  # fmt: skip
        checkpoint.skipped = candidates[: len(failures)]
        return checkpoint
    raise CheckpointError(
        "; ".join(failures) + (" (no earlier checkpoint)" if len(failures) < 2 else "")
    )


def discard_skipped(directory: str | Path, checkpoint: Checkpoint) -> None:
    """Point ``LATEST`` at ``checkpoint`` and rename the corrupt ones it skipped to
    ``corrupt-<name>`` (kept for inspection, never read again)."""
    directory = Path(directory)
    for name in checkpoint.skipped:
        target = directory / f"corrupt-{name}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(directory / name, target)
    pointer = directory / (_LATEST + ".tmp")
    pointer.write_text(checkpoint.path.name + "\n")
    os.replace(pointer, directory / _LATEST)


def _read_folder(folder: Path) -> Checkpoint:
    """Read and check one checkpoint folder (checksums, then each file, then finiteness)."""
    sums_file = folder / _CHECKSUMS
    if sums_file.is_file():  # checkpoints of sfpk <= 0.2 have none
        try:
            sums = json.loads(sums_file.read_text())
        except ValueError as exc:
            raise CheckpointError(f"cannot read checkpoint {str(folder)!r}: {exc}") from exc
        for file, want in sums.items():
            path = folder / file
            if not path.is_file() or _sha256(path) != want:
                raise CheckpointError(
                    f"cannot read checkpoint {str(folder)!r}: {file} is missing or does not "
                    "match its checksum (truncated or corrupted)"
                )
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
