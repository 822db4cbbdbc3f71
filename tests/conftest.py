"""Shared fixtures: tiny budgets so every pipeline runs in a second or two on a CPU."""

from __future__ import annotations

import pytest
import torch

# Small enough for seconds-long runs; sklearn digits load in ~0.4 s, MNIST-1D in ~2 s.
TINY = {
    "data.dataset": "digits",
    "model.name": "mlp",
    "model.options": {"hidden": [32]},
    "pretrain.epochs": 2,
    "train.epochs": 3,
    "train.warmup_epochs": 1,
    "train.report_last_k": 2,
    "prune.method": "mag",
    "prune.sparsity": 0.9,
    "run.quiet": True,
    "run.device": "cpu",
    "run.plots": False,
}

TINY_FLAGS = [
    "--data", "digits", "--model", "mlp", "--model-option", "hidden=[32]",
    "--pretrain-epochs", "2", "--epochs", "3", "--warmup-epochs", "1",
    "--report-last-k", "2", "--sparsity", "0.9", "--quiet", "--device", "cpu", "--no-plots",
]  # fmt: skip

# The same for `sfpk pretrain`, which refuses the fine-tuning and pruning flags (no effect).
TINY_DENSE_FLAGS = [
    flag
    for i, flag in enumerate(TINY_FLAGS)
    if flag not in ("--epochs", "--warmup-epochs", "--sparsity")
    and TINY_FLAGS[i - 1] not in ("--epochs", "--warmup-epochs", "--sparsity")
]


def without_pretrain(flags: list[str]) -> list[str]:
    """``flags`` without the ``--pretrain-*`` pairs (a run from --checkpoint refuses them)."""
    out: list[str] = []
    skip = False
    for flag in flags:
        if skip:
            skip = False
            continue
        if flag.startswith("--pretrain-"):
            skip = True
            continue
        out.append(flag)
    return out


def tiny_flags(pipeline: str) -> list[str]:
    """The tiny flags ``sfpk <pipeline>`` accepts: it refuses those it would ignore
    (pretrain: fine-tuning and pruning; iterative: the one-shot warm-up)."""
    if pipeline == "pretrain":
        return list(TINY_DENSE_FLAGS)
    if pipeline == "iterative":
        at = TINY_FLAGS.index("--warmup-epochs")
        return TINY_FLAGS[:at] + TINY_FLAGS[at + 2 :]
    return list(TINY_FLAGS)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytest.mark.usefixtures("one_thread")``):
    on shared cores two spinning OpenMP threads run small kernels up to ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> dict:
    """A copy of the tiny dotted-key overrides (digits / small MLP / mag)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
