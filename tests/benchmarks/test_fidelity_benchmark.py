"""benchmarks/fidelity.py --quick: one seed of the golden fidelity protocol writes a row.

No accuracy threshold is asserted (that is the benchmark's job, on all seeds); this checks
that the benchmark runs against the current API and writes well-formed results.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from golden import require_golden

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_fidelity_run_writes_a_well_formed_row(tmp_path):
    """One SFPK seed on the reference's trained CNN: CSV and JSON rows with the fields."""
    golden = require_golden("fidelity/reference.json") / "fidelity"
    out = tmp_path / "fidelity"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--quick",
         "--golden", str(golden), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out.with_suffix(".csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {"method", "removed", "seed", "acc"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["acc"]) <= 100.0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data
