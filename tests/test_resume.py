"""Kill -9 a run at chosen points, `sfpk resume` it, and get the uninterrupted result exactly.

The runs are real subprocesses (``python -m sfpk``). ``SFPK_TEST_PAUSE_AT=label`` makes the
process write ``DIR/PAUSED`` and sleep at that point, so the test can SIGKILL it there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sfpk
from cli_runs import read_run, run_env
from conftest import TINY_FLAGS

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


def _start(name: str, out: Path, pause: str | None = None) -> subprocess.Popen | None:
    args = [sys.executable, "-m", "sfpk", *CONFIGS[name], *TINY_FLAGS, "--out", str(out)]
    if pause is None:
        done = subprocess.run(args, capture_output=True, text=True, env=run_env())
        assert done.returncode == 0, done.stderr
        return None
    return subprocess.Popen(
        args, env=run_env(pause), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _kill_when_paused(proc: subprocess.Popen, out: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "PAUSED").exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before the pause point: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("pause point not reached in time")
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, no finally blocks
    proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, computed once per configuration."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"ref-{name}") / "run"
            _start(name, out)
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
    ("oneshot", "pretrain:0:before"),  # before the first checkpoint exists
    ("oneshot", "pretrain:1"),  # during pretraining, right after an epoch checkpoint
    ("oneshot", "prune:0:done"),  # between pruning rounds
    ("oneshot", "finetune:1:before"),  # metrics row written, checkpoint not yet
    ("iterative", "tune:0:0"),  # inside the fine-tuning between rounds
    ("iterative", "prune:1:done"),  # between iterative rounds
]


@pytest.mark.parametrize(("name", "point"), POINTS, ids=[f"{n}-{p}" for n, p in POINTS])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, reference, name, point):
    """A run killed at any point and resumed ends with the same metrics, masks and weights."""
    out = tmp_path / "run"
    _kill_when_paused(_start(name, out, pause=point), out)
    assert not (out / "summary.json").exists()
    done = _sfpk(["resume", str(out), "--quiet"], env=run_env())
    assert done.returncode == 0, done.stderr
    _assert_same(read_run(out), reference(name))


@pytest.mark.skipif("sfpk" not in sfpk.methods(), reason="SFPK engine not registered")
@pytest.mark.parametrize("point", ["prune:0:step-checkpoint:1", "prune:1:step-checkpoint:2"])
def test_resume_during_sfpk_steps_matches_uninterrupted_run(tmp_path, reference, point):
    """Killed mid-simulation (also in a continued second round), SFPK resumes bit-identically."""
    out = tmp_path / "run"
    _kill_when_paused(_start("sfpk", out, pause=point), out)
    done = _sfpk(["resume", str(out), "--quiet"], env=run_env())
    assert done.returncode == 0, done.stderr
    _assert_same(read_run(out), reference("sfpk"))


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path):
    """`sfpk resume` on a random folder is a one-line error with exit status 2."""
    done = _sfpk(["resume", str(tmp_path)], env=run_env())
    assert done.returncode == 2
    assert done.stderr.startswith("sfpk: error:") and "Traceback" not in done.stderr
