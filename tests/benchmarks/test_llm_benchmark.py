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

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "benchmarks" / "llm.py")
METHODS = ("mag", "wanda", "sparsegpt", "spode", "sfpk")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny quality run (every method at 50 % and 2:4): its folder, stdout and JSON."""
    folder = tmp_path_factory.mktemp("llm")
    out = folder / "llm.json"
    done = _run("quality", "--tiny", "--cache", str(folder / "cache"), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout, json.loads(out.read_text())


@pytest.mark.slow  # tens of seconds on a shared 2-core machine
def test_tiny_quality_run_writes_every_method_at_exact_sparsity(tiny_run):
    """--tiny: every method at 50 % and 2:4 gives a finite perplexity at exactly 50 %."""
    _, stdout, payload = tiny_run
    rows = payload["rows"]
    assert {(r["method"], r["sparsity"]) for r in rows} == {
        (m, s) for m in METHODS for s in ("0.5", "2:4")
    }
    for row in rows:
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1.0
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert row["prune_seconds"] > 0.0
    assert math.isfinite(payload["dense"]["ppl"]) and payload["dense"]["curve"]
    assert "training it" in stdout and "| sfpk |" in stdout


@pytest.mark.slow
def test_tiny_quality_rerun_reads_the_cached_dense_model(tiny_run):
    """A second run with the same settings loads the dense model instead of training it."""
    folder, _, first = tiny_run
    out = folder / "again.json"
    done = _run("quality", "--tiny", "--methods", "mag", "--sparsities", "0.5",
                "--cache", str(folder / "cache"), "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cached in" in done.stdout and "training it" not in done.stdout
    again = json.loads(out.read_text())
    mag = next(r for r in first["rows"] if (r["method"], r["sparsity"]) == ("mag", "0.5"))
    assert again["dense"]["ppl"] == first["dense"]["ppl"] and again["rows"][0]["ppl"] == mag["ppl"]


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
