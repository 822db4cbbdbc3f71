"""benchmarks/llm.py on tiny configurations: the quality path and the scale path end to end.

No perplexity threshold is asserted (the full benchmark reports those); this checks that the
benchmark runs against the current ``sfpk.llm`` API and writes well-formed JSON. The quality
path trains a tiny Llama for a few steps on 8 files per split of the running Python's own
standard library (present wherever Python is), cached under the test's temporary folder.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmarks" / "llm.py")
METHODS = ("mag", "wanda", "sparsegpt", "spode", "sfpk")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # tens of seconds on a shared 2-core machine
def test_tiny_quality_run_writes_every_method_at_exact_sparsity(tmp_path):
    """--tiny: every method at 50 % and 2:4 gives a finite perplexity at exactly 50 %."""
    out = tmp_path / "llm.json"
    done = _run("quality", "--tiny", "--cache", str(tmp_path / "cache"), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert {(r["method"], r["sparsity"]) for r in rows} == {
        (m, s) for m in METHODS for s in ("0.5", "2:4")
    }
    for row in rows:
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1.0
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert row["prune_seconds"] > 0.0
    assert math.isfinite(payload["dense"]["ppl"]) and payload["dense"]["curve"]
    assert "test perplexity" in done.stdout and "sfpk" in done.stdout


@pytest.mark.slow
def test_tiny_quality_rerun_reads_the_cached_dense_model(tmp_path):
    """A second run with the same settings loads the dense model instead of training it."""
    cache = str(tmp_path / "cache")
    args = ("quality", "--tiny", "--methods", "mag", "--sparsities", "0.5", "--cache", cache)
    first = _run(*args, "--out", str(tmp_path / "a.json"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(*args, "--out", str(tmp_path / "b.json"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training it" in first.stdout and "cached in" in second.stdout
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["dense"]["ppl"] == b["dense"]["ppl"] and a["rows"][0]["ppl"] == b["rows"][0]["ppl"]


@pytest.mark.slow
def test_tiny_scale_run_reports_seconds_per_block_and_peak_memory(tmp_path):
    """scale --tiny: each method's seconds per block, peak RSS and the ratio to sparsegpt."""
    out = tmp_path / "scale.json"
    done = _run("scale", "--tiny", "--samples", "4", "--seqlen", "16", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["wanda", "sparsegpt", "sfpk"]
    for r in results:
        assert len(r["block_seconds"]) == r["blocks_run"] == 2 and not r["extrapolated"]
        assert r["peak_rss_mb"] > 0 and r["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert results[1]["x_sparsegpt"] == pytest.approx(1.0)


@pytest.mark.slow  # imports torch and transformers in a subprocess
def test_bad_sparsity_is_refused_before_any_training(tmp_path):
    """A malformed --sparsities entry fails at once, with no dense model trained."""
    done = _run("quality", "--tiny", "--sparsities", "half", "--cache", str(tmp_path))
    assert done.returncode != 0 and "half" in done.stderr
    assert not any(tmp_path.iterdir())
