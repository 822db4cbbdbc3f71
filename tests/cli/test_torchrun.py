"""`torchrun --nproc_per_node 2 -m sfpk oneshot` (gloo, CPU): data-parallel, one writer, resume.

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


def test_two_ranks_train_data_parallel_and_prune_exactly(launched, single):
    """The 2-rank run trains with DDP (each rank half of every global batch), so its weights
    differ from the single process's in the last bits and in the sample order; its masks
    hit the same exact sparsity and its pruned weights are zero."""
    summary, one = launched["summary"], single["summary"]
    assert summary["achieved_sparsity"] == one["achieved_sparsity"]
    assert launched["masks"].keys() == single["masks"].keys()
    for name, mask in launched["masks"].items():
        weight = launched["model"][name]
        assert bool((weight[mask == 0] == 0).all()), name
    assert len(launched["metrics"]) == len(single["metrics"])  # one row per epoch, rank 0's
    assert 0.0 < summary["final_test_acc"] <= 1.0


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


def test_two_ranks_resume_a_killed_run_to_the_uninterrupted_result(tmp_path, launched):
    """Killed in fine-tuning and resumed under torchrun, the run ends as the uninterrupted
    2-rank run, bit for bit."""
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
    assert got["summary"] == launched["summary"]
    assert got["metrics"] == launched["metrics"]
    _assert_same_tensors(got["masks"], launched["masks"])
    _assert_same_tensors(got["model"], launched["model"])
