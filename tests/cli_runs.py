"""Helpers for the tests that run ``python -m sfpk`` (or torchrun) as real subprocesses.

Both sides of a bit-equality comparison must use the same environment: one thread per
process (the thread count changes the order of floating-point reductions) and a fixed hash
seed. :func:`kill_launcher` runs the command under ``pause_launcher.py`` instead, which
SIGKILLs it at a chosen checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from safetensors.torch import load_file

from pause_launcher import KILLED

LAUNCHER = Path(__file__).with_name("pause_launcher.py")
TIMING = {"seconds", "prune_seconds", "finetune_seconds", "pretrain_seconds"}


def run_env() -> dict[str, str]:
    """The subprocess environment: one thread, fixed hash seed."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def kill_launcher(label: str, runner: list[str] | None = None) -> list[str]:
    """A command prefix (for the sfpk arguments) that runs ``sfpk`` with ``runner`` (python,
    or torchrun) and SIGKILLs its main process at checkpoint ``label`` (``pause_launcher.py``
    lists the labels)."""
    return [*(runner or [sys.executable]), str(LAUNCHER), label, "--"]


def was_killed_at(stderr: str, label: str) -> bool:
    """Whether the launcher reported killing the run at ``label``."""
    return KILLED.format(label) in stderr


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
