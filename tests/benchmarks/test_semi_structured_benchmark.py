"""benchmarks/semi_structured_speed.py: the pair it times is built right, and off-GPU it
stops with sfpk's message (the timing itself needs a CUDA GPU: benchmarks/device_check.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def _load():
    path = ROOT / "benchmarks" / "semi_structured_speed.py"
    spec = importlib.util.spec_from_file_location("semi_structured_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["semi_structured_speed"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_the_timed_pair_is_an_exact_2_4_model_in_half_precision(name):
    """Both copies are fp16 with the same weights, and every group of 4 consecutive input
    weights of every linear layer keeps exactly 2."""
    bench = _load()
    dense, sparse, shape, converted = bench.pruned_pair(name, 64, 8, None)
    assert converted == [] and shape == ((64,) if name == "mlp" else (8, 768))
    for a, b in zip(dense.modules(), sparse.modules(), strict=True):
        if isinstance(a, nn.Linear):
            assert a.weight.dtype == torch.float16 and torch.equal(a.weight, b.weight)
            groups = (a.weight != 0).reshape(a.weight.shape[0], -1, 4).sum(-1)
            assert bool((groups == 2).all())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_it_exits_2_with_the_reason(capsys):
    bench = _load()
    assert bench.main(["--models", "mlp", "--width", "64", "--batches", "1"]) == 2
    assert "needs a CUDA GPU of compute capability 8.0" in capsys.readouterr().err
