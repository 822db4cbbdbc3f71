"""benchmarks/latency.py: the slim widths it documents, and runtimes that compute the same.

No time is asserted (timings belong to the benchmark); this checks the pieces the tables in
docs/performance.md rest on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from latency import INPUT_SHAPE, Unreachable, build_pair  # noqa: E402
from latency_runtimes import runners  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "sparsity, round_to, widths",
    [
        (0.5, 1, "16->11 32->22 64->44"),
        (0.9, 1, "16->5 32->10 64->20"),
        (0.7, 16, "16->16 32->16 64->32"),
    ],
)
def test_slim_pair_has_the_documented_widths(sparsity, round_to, widths):
    """The "kept channels" of the tables are what slim_model actually built."""
    pair = build_pair("resnet20", sparsity, round_to)
    assert pair.kept_channels == widths
    kept = {pair.slim.get_submodule(n).out_channels for n in ("conv1", "layer2.0.conv1")}
    assert kept == {int(w.split("->")[1]) for w in widths.split()[:2]}
    assert pair.achieved_sparsity >= sparsity - 0.01


@pytest.mark.parametrize("runtime", ["torch", "torch-folded", "torchscript", "onnxruntime"])
def test_runtime_runs_dense_and_slim_like_eager_torch(runtime, tmp_path):
    """Each runtime's dense and slim runners pass the check against eager torch."""
    pair = build_pair("resnet20", 0.5)
    x = torch.randn(3, *INPUT_SHAPE)
    files = {}
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
        from sfpk.deploy.onnx_export import export_onnx

        for label in ("dense", "slim"):
            model = getattr(pair, label)
            files[label] = export_onnx(model, tmp_path / f"{label}.onnx", x[:2])
    models = {"dense": pair.dense, "slim": pair.slim}
    run_dense, run_slim = runners(runtime, models, files, x, threads=1)
    with torch.no_grad():
        expected = pair.slim(x)
    torch.testing.assert_close(torch.as_tensor(run_slim()), expected, atol=1e-3, rtol=1e-3)
    assert torch.as_tensor(run_dense()).shape == (3, 10)


def test_product_masks_with_round_to_give_aligned_slim_widths():
    """--masks prune: sfpk.prune(round_to=16) masks slim to multiples of 16 channels, with at
    least the asked fraction of the slim weights removed; an unreachable cell is an error."""
    pair = build_pair("resnet20", 0.5, 16, "prune")
    widths = [m.out_channels for m in pair.slim.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths and all(w % 16 == 0 for w in widths)
    assert min(widths) == 16 and pair.achieved_sparsity >= 0.5
    assert pair.masks.round_to == 16
    with pytest.raises(Unreachable, match="at most 84.3% of the slim weights"):
        build_pair("resnet20", 0.9, 16, "prune")
