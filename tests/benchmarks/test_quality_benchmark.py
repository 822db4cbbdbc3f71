"""benchmarks/quality.py --tiny: one cell runs, a second invocation skips it, the row is whole.

No accuracy threshold is asserted; this checks resumability (a finished cell, i.e. one with a
``summary.json``, is not run again) and the written results (CSV row, JSON table, figure).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~12 s of CPU, ~45 s on the shared machine
def test_tiny_study_runs_once_then_skips_and_writes_a_well_formed_row(tmp_path, capsys):
    quality = _load_quality()
    out = tmp_path / "quality"
    args = ["--tiny", "--out", str(out), "--jobs", "1"]

    rows = quality.main(args)
    first = capsys.readouterr().out
    assert "0 finished before, 1 to run" in first
    (cell,) = quality.grid("tiny")
    summary = out / "runs" / cell.name / "summary.json"
    stamp = summary.stat().st_mtime_ns

    again = quality.main(args)
    second = capsys.readouterr().out
    assert "1 finished before, 0 to run" in second
    assert summary.stat().st_mtime_ns == stamp  # not rerun
    assert again == rows

    (row,) = rows
    assert set(row) == set(quality.CSV_FIELDS)
    assert (row["family"], row["data"], row["method"], row["seed"]) == (
        "unstructured", "digits", "mag", 0,
    )  # fmt: skip
    assert row["sparsity"] == 0.9 and abs(row["achieved_sparsity"] - 0.9) < 1e-3
    for key in ("dense", "pruned", "last_k", "final"):
        assert 0.0 <= row[key] <= 100.0
    assert row["k"] == 1 and row["guard_rescued"] >= 0
    with open(out / "cells.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 1 and written[0]["run"] == cell.name
    table = json.loads((out / "table.json").read_text())
    assert table["finished"] == 1 and table["missing"] == []
    (entry,) = table["table"]
    assert entry["seeds"] == [0] and entry["last_k_mean"] == row["last_k"]
    assert (out / "quality.png").stat().st_size > 0


def test_cells_without_run_folders_keep_their_recorded_rows_unless_rerun(tmp_path, capsys):
    """A family rerun alone (--families F --rerun) must not lose the other cells' results,
    and must not mix the superseded rows of F into the report."""
    quality = _load_quality()
    kept = quality.Cell("unstructured", "digits", "mag", 0.9, 0)
    redone = quality.Cell("filter", "digits", "mag", 0.5, 0)
    results = tmp_path / "quality"
    results.mkdir()
    rows = [
        {
            **dict.fromkeys(quality.CSV_FIELDS, ""),
            "family": cell.family,
            "data": cell.data,
            "model": "cnn_digits",
            "method": cell.method,
            "sparsity": cell.sparsity,
            "seed": 0,
            "dense": 99.7,
            "pruned": pruned,
            "last_k": 99.0,
            "final": 99.0,
            "k": 3,
            "achieved_sparsity": cell.sparsity,
            "guard_rescued": 0,
            "prune_seconds": 1.0,
            "seconds": 2.0,
            "run": cell.name,
        }  # fmt: skip
        for cell, pruned in ((kept, 98.1), (redone, 60.0))
    ]
    with (results / "cells.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=quality.CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    recorded = quality.recorded_rows(results)
    assert recorded[kept.name]["pruned"] == 98.1 and recorded[kept.name]["seed"] == 0
    both = quality.report([kept, redone], results / "runs", results)
    assert [r["run"] for r in both] == [kept.name, redone.name]
    only = quality.report([kept, redone], results / "runs", results, rerun=["filter"])
    assert [r["run"] for r in only] == [kept.name]
    assert "1 of 2 cells finished; missing: 1" in capsys.readouterr().out
    with (results / "cells.csv").open() as handle:
        assert [r["run"] for r in csv.DictReader(handle)] == [kept.name]


def test_rerun_moves_the_familys_run_folders_aside_and_needs_families(tmp_path):
    """--rerun must really run a family again (its folders would otherwise be skipped) and
    must lose nothing: the folders move to runs/superseded-<time>/; without --families, or
    with --report-only, it is refused."""
    quality = _load_quality()
    runs = tmp_path / "runs"
    (runs / "digits" / "filter" / "mag-0.5-s0").mkdir(parents=True)
    (runs / "digits" / "filter" / "mag-0.5-s0" / "summary.json").write_text("{}")
    (runs / "digits" / "unstructured").mkdir(parents=True)
    target = quality.supersede(runs, ["filter"])
    assert target is not None and target.name.startswith("superseded-")
    assert not (runs / "digits" / "filter").exists()
    assert (target / "digits" / "filter" / "mag-0.5-s0" / "summary.json").is_file()
    assert (runs / "digits" / "unstructured").is_dir()
    assert quality.supersede(runs, ["filter"]) is None
    for argv in (["--rerun"], ["--rerun", "--families", "filter", "--report-only"]):
        with pytest.raises(SystemExit):
            quality.main(["--out", str(tmp_path), *argv])
