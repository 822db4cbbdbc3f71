"""The dense MNIST-1D cnn1d that the method benchmarks prune (shared by accuracy.py and
collapse.py): pretrained once with the demo's 15 epochs, then reused from its folder."""

from __future__ import annotations

from pathlib import Path

from sfpk.cli import main as sfpk

COMMON = ["--data", "mnist1d", "--model", "cnn1d", "--quiet", "--device", "cpu", "--no-plots"]


def pretrained_dense(folder: Path) -> Path:
    """``folder/model.safetensors``, pretraining it first when it does not exist yet."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        status = sfpk(["pretrain", *COMMON, "--pretrain-epochs", "15", "--out", str(folder),
                       "--overwrite"])  # fmt: skip
        if status != 0:
            raise SystemExit(status)
    return weights
