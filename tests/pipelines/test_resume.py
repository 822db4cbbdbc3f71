"""Kill -9 a run at chosen points, `sfpk resume` it, and get the uninterrupted result exactly.

The runs are real subprocesses. The interrupted ones run under ``pause_launcher.py``, which
SIGKILLs the process right after (or, with ``before:``, just before) the checkpoint named by
a label such as ``finetune:epoch:2`` or ``prune:0:done``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runs import kill_launcher, read_run, run_env, was_killed_at
from conftest import tiny_flags

pytestmark = pytest.mark.slow  # every test runs `python -m sfpk` subprocesses

CONFIGS = {
    "oneshot": ["oneshot", "--method", "mag", "--rounds", "2"],
    "iterative": [
        "iterative", "--method", "rand", "--rounds", "3", "--round-epochs", "2",
        "--round-lr-end", "0.001", "--epochs", "2",
    ],
    "sfpk": [
        "oneshot", "--method", "sfpk", "--rounds", "2", "--option", "num_steps=6",
        "--option", "num_particles=2", "--prune-batch-size", "128",
        "--checkpoint-every-steps", "2", "--epochs", "2",
    ],
}  # fmt: skip


def _sfpk(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfpk", *args], capture_output=True, text=True, **kwargs
    )


def _args(name: str, out: Path) -> list[str]:
    return [*CONFIGS[name], *tiny_flags(CONFIGS[name][0]), "--out", str(out)]


def _run_killed_at(name: str, out: Path, label: str) -> None:
    """Run configuration ``name`` into ``out`` and SIGKILL it at checkpoint ``label``."""
    done = subprocess.run(
        [*kill_launcher(label), *_args(name, out)],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,  # against a hang only
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert was_killed_at(done.stderr, label), done.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, computed once per configuration."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"ref-{name}") / "run"
            done = _sfpk(_args(name, out), env=run_env())
            assert done.returncode == 0, done.stderr
            cache[name] = read_run(out)
        return cache[name]

    return get


def _assert_same(got: dict, want: dict) -> None:
    assert got["summary"] == want["summary"]
    assert got["metrics"] == want["metrics"]
    for kind in ("masks", "model"):
        assert got[kind].keys() == want[kind].keys()
        for name in want[kind]:
            assert torch.equal(got[kind][name], want[kind][name]), (kind, name)


POINTS = [
    ("oneshot", "before:pretrain:epoch:1"),  # before the first checkpoint exists
    ("oneshot", "pretrain:epoch:2"),  # during pretraining, right after an epoch checkpoint
    ("oneshot", "prune:0:done"),  # between pruning rounds
    ("oneshot", "before:finetune:epoch:2"),  # metrics row written, checkpoint not yet
    ("iterative", "tune:0:epoch:1"),  # inside the fine-tuning between rounds
    ("iterative", "prune:1:done"),  # between iterative rounds
]


@pytest.mark.parametrize(("name", "point"), POINTS, ids=[f"{n}-{p}" for n, p in POINTS])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, reference, name, point):
    """A run killed at any point and resumed ends with the same metrics, masks and weights."""
    out = tmp_path / "run"
    _run_killed_at(name, out, point)
    assert not (out / "summary.json").exists()
    done = _sfpk(["resume", str(out), "--quiet"], env=run_env())
    assert done.returncode == 0, done.stderr
    _assert_same(read_run(out), reference(name))


# --checkpoint-every-steps 2 of 6 steps: step checkpoints at steps 2, 4 and 6 of each round.
@pytest.mark.parametrize("point", ["prune:0:step:2", "prune:1:step:4"])
def test_resume_during_sfpk_steps_matches_uninterrupted_run(tmp_path, reference, point):
    """Killed mid-simulation (also in a continued second round), SFPK resumes bit-identically."""
    out = tmp_path / "run"
    _run_killed_at("sfpk", out, point)
    done = _sfpk(["resume", str(out), "--quiet"], env=run_env())
    assert done.returncode == 0, done.stderr
    _assert_same(read_run(out), reference("sfpk"))


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path):
    """`sfpk resume` on a random folder is a one-line error with exit status 2."""
    done = _sfpk(["resume", str(tmp_path)], env=run_env())
    assert done.returncode == 2
    assert done.stderr.startswith("sfpk: error:") and "Traceback" not in done.stderr
