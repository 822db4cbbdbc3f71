"""Helpers for the tests that run ``python -m sfpk`` (or torchrun) as real subprocesses.

Both sides of a bit-equality comparison must use the same environment: one thread per
process (the thread count changes the order of floating-point reductions) and a fixed hash
seed; ``pause`` sets the test-only pause point (see :data:`sfpk.pipelines.PAUSE_ENV`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from safetensors.torch import load_file

from sfpk.pipelines import PAUSE_ENV

TIMING = {"seconds", "prune_seconds", "finetune_seconds", "pretrain_seconds"}


def run_env(pause: str | None = None) -> dict[str, str]:
    """The subprocess environment: one thread, fixed hash seed, optional pause point."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop(PAUSE_ENV, None)
    if pause is not None:
        env[PAUSE_ENV] = pause
    return env


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file without the (timing) ``seconds`` column."""
    with path.open() as handle:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)]


def read_run(run: Path, *, steps: bool = False) -> dict:
    """What must match between two runs: summary (no timings), metrics rows, masks, model.

    With ``steps``, also the list of files written and the rows of ``sfpk_steps.csv``.
    """
    summary = json.loads((run / "summary.json").read_text())
    result = {
        "summary": {k: v for k, v in summary.items() if k not in TIMING},
        "metrics": _rows(run / "metrics.csv"),
        "masks": load_file(run / "masks.safetensors"),
        "model": load_file(run / "model.safetensors"),
    }
    if steps:
        result["files"] = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
        result["steps"] = _rows(run / "sfpk_steps.csv")
    return result
