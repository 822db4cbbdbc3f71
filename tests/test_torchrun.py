"""`torchrun --nproc_per_node 2 -m sfpk oneshot` (gloo, CPU) writes the single-process run.

The runs are real subprocesses of the venv's ``torchrun`` and ``python -m sfpk``, both with
one thread per process: the thread count changes the order of floating-point reductions, so
bit equality needs the same count on both sides.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runs import kill_launcher, read_run, run_env, was_killed_at
from conftest import TINY_FLAGS

TORCHRUN = Path(sys.executable).parent / "torchrun"
ARGS = [
    "oneshot", "--method", "sfpk", "--option", "num_steps=3", "--option", "num_particles=3",
    "--epochs", "2", *TINY_FLAGS,
]  # fmt: skip
TWO_RANKS = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]
LAUNCH = [*TWO_RANKS, "-m", "sfpk"]
SINGLE = [sys.executable, "-m", "sfpk"]

pytestmark = pytest.mark.slow  # torchrun subprocesses with 2 gloo ranks


def _run(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, *args], capture_output=True, text=True, env=run_env(), timeout=120
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The single-process run (one thread), computed once."""
    out = tmp_path_factory.mktemp("single") / "run"
    done = _run(SINGLE, [*ARGS, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return read_run(out, steps=True)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    """The same run under torchrun with 2 gloo ranks: its folder, stdout and results."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    done = _run(LAUNCH, [*ARGS, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return {"out": out, "stdout": done.stdout, **read_run(out, steps=True)}


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_two_ranks_write_the_single_process_masks_and_model(launched, single):
    """Splitting the particle passes over 2 ranks must not change a single weight or mask."""
    _assert_same_tensors(launched["masks"], single["masks"])
    _assert_same_tensors(launched["model"], single["model"])


def test_two_ranks_report_the_single_process_numbers(launched, single):
    """summary.json, metrics.csv and sfpk_steps.csv hold the single run's numbers, once each."""
    got = launched
    assert got["summary"]["final_test_acc"] == single["summary"]["final_test_acc"]
    assert got["summary"] == single["summary"]
    assert len(got["metrics"]) == len(single["metrics"])  # no row written by rank 1 too
    assert got["metrics"] == single["metrics"]
    assert got["steps"] == single["steps"]


def test_two_ranks_write_one_set_of_files_and_print_one_summary(launched, single):
    """Only rank 0 writes (no stray temporaries) and prints the summary table."""
    assert launched["files"] == single["files"]
    assert launched["stdout"].count("final test acc") == 1


def test_existing_run_directory_fails_on_every_rank_without_hanging(launched):
    """Rank 0's refusal reaches rank 1, so torchrun exits instead of hanging (timeout)."""
    done = _run(LAUNCH, [*ARGS, "--out", str(launched["out"])])
    assert done.returncode != 0
    # Rank 0 always reports; torchrun may stop rank 1 as soon as rank 0 has failed, so
    # rank 1's own error (naming rank 0's refusal) appears only when it wins that race.
    reports = done.stderr.count("sfpk: error:")
    assert 1 <= reports <= 2, done.stderr
    assert done.stderr.count("already exists") == reports, done.stderr
    assert done.stderr.count("sfpk: error: run directory") == 1, done.stderr  # rank 0's


def test_two_ranks_resume_a_killed_run_to_the_single_process_result(tmp_path, single):
    """Killed in fine-tuning and resumed under torchrun, the run ends as the uninterrupted one."""
    out = tmp_path / "run"
    label = "finetune:epoch:1"
    # Rank 0 SIGKILLs itself right after that checkpoint; torchrun then stops rank 1 and fails.
    killed = _run(kill_launcher(label, TWO_RANKS), [*ARGS, "--out", str(out)])
    assert killed.returncode != 0
    assert was_killed_at(killed.stderr, label), killed.stderr
    assert not (out / "summary.json").exists()
    done = _run(LAUNCH, ["resume", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    got = read_run(out, steps=True)
    assert got["summary"] == single["summary"]
    assert got["metrics"] == single["metrics"]
    _assert_same_tensors(got["masks"], single["masks"])
    _assert_same_tensors(got["model"], single["model"])
