"""benchmarks/transformer_quality.py --quick and benchmarks/transformer_cost_gpu.py without CUDA.

No perplexity or accuracy threshold is asserted (the full benchmark reports those); this
checks that the benchmark runs against the current API and writes well-formed rows, and that
the GPU cost script refuses clearly to run on a machine without CUDA.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"mag", "wanda", "snip", "spode", "sfpk"}


@pytest.mark.slow  # about 15 s on one idle core, more on a shared machine
def test_quick_transformers_run_writes_well_formed_rows(tmp_path):
    """--quick: dense + every method at 50 % on gpt_tiny and vit_tiny, exact sparsity."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "transformer_quality.py"), "--quick",
         "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with (tmp_path / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["task"], r["method"]) for r in rows} == {
        (task, method) for task in ("gpt", "vit") for method in METHODS | {"dense"}
    }
    for row in rows:
        pruned, tuned = float(row["pruned"]), float(row["tuned"])
        if row["metric"] == "ppl":
            assert math.isfinite(pruned) and pruned > 1.0 and math.isfinite(tuned)
        else:
            assert 0.0 <= pruned <= 100.0 and 0.0 <= tuned <= 100.0
        expected = 0.0 if row["method"] == "dense" else 0.5
        assert float(row["achieved_sparsity"]) == pytest.approx(expected, abs=1e-3)
    payload = json.loads((tmp_path / "summary.json").read_text())
    assert payload["quick"] and len(payload["summary"]) == len(rows)
    assert {"pruned_sd", "tuned_sd", "seeds"} <= set(payload["summary"][0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CUDA-less host")
def test_gpu_cost_script_fails_clearly_without_cuda(tmp_path):
    """transformer_cost_gpu.py exits non-zero with a one-line reason when CUDA is absent."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "transformer_cost_gpu.py"),
         "--out", str(tmp_path / "gpu.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "needs CUDA" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "gpu.json").exists()
