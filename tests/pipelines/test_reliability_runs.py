"""Failures after a run has started: marked folders, NaN mid-run, interrupts, corrupt and
half-written checkpoints, and the results that must not surprise (docs/reliability.md).

The runs are tiny (digits / MLP / mag, ~1 s each) and in-process, on one thread so that a
resumed run can be compared bit for bit with an uninterrupted one; one test kills a real
subprocess with SIGKILL in the middle of a checkpoint write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import sfpk
from cli_runs import read_run, run_env
from conftest import TINY_FLAGS
from helpers import model_and_batches
from pause_launcher import checkpoint_label
from sfpk.cli import main
from sfpk.cli.commands import _percent
from sfpk.cli.flags import USED_BY, flag_for, used_by
from sfpk.cli.reference import translate
from sfpk.config.core import SECTIONS, Config
from sfpk.pipelines.context import Context
from sfpk.pipelines.report import load_summaries
from sfpk.training.trainer import Trainer

FLAGS = ["oneshot", *TINY_FLAGS, "--method", "mag", "--rounds", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the subprocess runs use, so results compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*FLAGS, "--out", str(out)]) == 0
    return read_run(out)


def _assert_same(got: dict, want: dict) -> None:
    assert got["summary"] == want["summary"]
    assert got["metrics"] == want["metrics"]
    for kind in ("masks", "model"):
        assert got[kind].keys() == want[kind].keys()
        for name in want[kind]:
            assert torch.equal(got[kind][name], want[kind][name]), name


def _stop_at(monkeypatch, label: str, stop) -> None:
    """Call ``stop()`` right after the checkpoint ``label`` is on disk."""
    original = Context.checkpoint

    def checkpoint(self: Context) -> None:
        current = checkpoint_label(self.progress)
        original(self)
        if current == label:
            stop()

    monkeypatch.setattr(Context, "checkpoint", checkpoint)


def _status(out: Path) -> dict:
    return json.loads((out / "status.json").read_text())


def test_nan_mid_finetune_stops_with_a_resumable_checkpoint(tmp_path, capsys, reference):
    """A NaN weight in fine-tuning epoch 2 stops the run at its first non-finite loss; the
    folder is marked failed, a plain rerun is refused with the error, and `sfpk resume`
    (the cause gone) continues from epoch 1's checkpoint to the uninterrupted result."""
    out = tmp_path / "run"
    original = Trainer.train_epoch

    def poisoned(self, loader, *, lr, desc="train"):
        if desc.startswith("finetune 2/"):
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        return original(self, loader, lr=lr, desc=desc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", poisoned)
        assert main([*FLAGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1:] == [
        "sfpk: error: training loss became nan at batch 0 (finetune 2/3): NaN or inf in the "
        "inputs, the weights or the loss (try a lower learning rate); no optimizer step was "
        "taken on it"
    ]
    status = _status(out)
    assert status["status"] == "failed" and status["error_type"] == "NonFiniteError"
    assert status["last_checkpoint"] is not None
    assert main([*FLAGS, "--out", str(out)]) == 2
    assert "already exists (it failed: training loss became nan" in capsys.readouterr().err
    assert main(["resume", str(out)]) == 0
    assert not (out / "status.json").exists()
    _assert_same(read_run(out), reference)


def test_sigterm_then_a_corrupt_newest_checkpoint_resumes_from_the_previous(
    tmp_path, capsys, reference
):
    """SIGTERM prints the run's path; with the newest checkpoint then truncated, resume
    warns, falls back to the one before, sets the bad one aside and ends as uninterrupted."""
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        _stop_at(patch, "finetune:epoch:2", lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert main([*FLAGS, "--out", str(out)]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"sfpk: terminated (SIGTERM); continue with `sfpk resume {out}`"
    )
    assert _status(out)["status"] == "interrupted"
    checkpoints = out / "checkpoints"
    newest = checkpoints / (checkpoints / "LATEST").read_text().strip()
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    assert main(["resume", str(out)]) == 0
    err = capsys.readouterr().err  # the logged warning
    assert f"{newest.name} failed its check" in err and "falling back to the previous one" in err
    assert (checkpoints / f"corrupt-{newest.name}").is_dir()
    _assert_same(read_run(out), reference)


def test_ctrl_c_prints_the_run_path_and_resume_finishes_it(tmp_path, capsys, reference):
    """The interrupt message names the actual folder (not a placeholder) and it resumes."""
    out = tmp_path / "run"

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        _stop_at(patch, "prune:0:done", interrupt)
        assert main([*FLAGS, "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"sfpk: interrupted; continue with `sfpk resume {out}`"
    )
    assert main(["resume", str(out)]) == 0
    _assert_same(read_run(out), reference)


def test_a_failure_before_the_first_checkpoint_is_explained_and_the_rerun_replaces_it(
    tmp_path, capsys, monkeypatch
):
    """Failed with nothing saved: resume explains instead of repeating; the same command
    with the same --out then runs (the failed folder is replaced, no --overwrite needed)."""
    out = tmp_path / "run"

    def broken(self: Context) -> None:
        raise sfpk.SfpkError("disk quota exceeded")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Context, "checkpoint", broken)
        assert main([*FLAGS, "--out", str(out)]) == 2
    assert capsys.readouterr().err == "sfpk: error: disk quota exceeded\n"
    assert _status(out) == {
        "status": "failed",
        "error": "disk quota exceeded",
        "error_type": "SfpkError",
        "last_checkpoint": None,
    }
    assert main(["resume", str(out)]) == 2
    assert "failed before its first checkpoint, so there is nothing to resume: disk quota" in (
        capsys.readouterr().err
    )
    assert main([*FLAGS, "--out", str(out)]) == 0
    assert not (out / "status.json").exists() and (out / "summary.json").is_file()


_KILL_MID_WRITE = """
import os, signal, sys
import sfpk.training.checkpoint as ckpt
from sfpk.cli import main
real, calls = ckpt.save_state_dict, []
def dying(state, path):
    if os.path.basename(os.path.dirname(path)).startswith(".tmp-"):  # a checkpoint's file
        calls.append(path)
    if calls and calls[-1] == path and len(calls) == int(sys.argv[1]):
        # half a file, then SIGKILL: a torn checkpoint write
        real(state, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(state, path)
ckpt.save_state_dict = dying
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_inside_a_checkpoint_write_then_resume(tmp_path, reference):
    """SIGKILL halfway through writing checkpoint 4 leaves checkpoint 3 in force; resume
    ignores the torn temporary folder and ends as the uninterrupted run."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_MID_WRITE, "4", *FLAGS, "--out", str(out)],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,  # against a hang only
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    checkpoints = out / "checkpoints"
    assert (checkpoints / ".tmp-000003").is_dir()  # the torn write
    assert (checkpoints / "LATEST").read_text() == "ckpt-000002\n"
    assert main(["resume", str(out)]) == 0
    assert not (checkpoints / ".tmp-000003").exists()
    _assert_same(read_run(out), reference)


# -- results that must not surprise ----------------------------------------------------------


def test_report_counts_a_run_once_however_it_is_named(tmp_path, reference, monkeypatch):
    """The same folder by three spellings (and a symlink) is one run, not three seeds."""
    out = tmp_path / "run"
    assert main([*FLAGS, "--out", str(out)]) == 0
    link = tmp_path / "link"
    link.symlink_to(out)
    monkeypatch.chdir(tmp_path)
    summaries = load_summaries(["run", str(out), "./run/", str(link)])
    assert len(summaries) == 1


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.99999999, "99.999999 %"), (0.9, "90.00 %"), (1e-7, "0.00001 %"), (0.99999, "99.999 %"),
     (1.0, "100.00 %"), (None, "-")],
)  # fmt: skip
def test_the_summary_never_rounds_to_100_or_0_percent(value, shown):
    """A sparsity short of 100 % shows enough digits to say so."""
    assert _percent(value) == shown


def test_disconnected_layers_are_warned_when_the_guard_is_off(caplog):
    """With the collapse guard off, a cut that empties a layer says which one."""
    model, data = model_and_batches("mlp")
    last = list(model.parameters())[-2]  # the last linear layer's weight
    with torch.no_grad():
        last.mul_(1e-6)  # magnitude pruning removes it first
    with caplog.at_level(logging.WARNING, logger="sfpk.api"):
        masks = sfpk.prune(model, data, method="mag", sparsity=0.9, collapse_guard="off")
    empty = [r["name"] for r in masks.layer_report() if r["kept"] == 0]
    assert empty and f"(collapse_guard='off'): {empty[0]}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sfpk.api"):
        sfpk.prune(model, data, method="mag", sparsity=0.9)  # the guard (row) keeps it
    assert "keep no weight" not in caplog.text


def test_a_pasted_reference_command_with_one_epoch_shortens_the_warmup():
    """`--ft_epochs 1` without `--warmup_epochs` fits the warm-up into the budget, with a note."""
    t = translate(["--exp", "oneshot", "--data", "digits", "--model", "mlp", "--ft_epochs", "1"])
    assert t.overrides["train.epochs"] == 1 and t.overrides["train.warmup_epochs"] == 1
    assert any("warm-up shortened to 1 epoch" in note for note in t.notes)
    sfpk.build_config("oneshot", overrides=t.overrides)  # now a valid config
    given = translate(["--exp", "oneshot", "--ft_epochs", "1", "--warmup_epochs", "3"])
    assert given.overrides["train.warmup_epochs"] == 3  # an explicit choice is not changed


def test_every_config_key_says_which_pipelines_read_it():
    """The USED_BY table covers every knob, so no flag escapes the no-effect rule."""
    sections = typing.get_type_hints(Config)
    for section in SECTIONS:
        for field in dataclasses.fields(sections[section]):
            key = f"{section}.{field.name}"
            assert used_by(key) and set(used_by(key)) <= {"pretrain", "oneshot", "iterative"}
            flag_for(key)
    assert "pretrain" not in used_by("prune.method")
    assert used_by("train.round_epochs") == ("iterative",)
    assert all(key.endswith(".") or "." in key for key in USED_BY)


def test_methods_lists_no_internal_plumbing(capsys):
    """`sfpk methods` shows hyperparameters only: no callbacks, states or process groups."""
    assert main(["methods"]) == 0
    listed = {
        line.split("=")[0].strip() for line in capsys.readouterr().out.splitlines()
        if line.startswith("    ")
    }  # fmt: skip
    assert "num_steps" in listed
    internal = {"trace_callback", "resume_state", "checkpoint_callback", "distributed",
                "observer", "start", "trace", "checkpoint_every", "on_checkpoint"}  # fmt: skip
    assert not listed & internal


def test_an_integral_float_option_comes_out_as_an_int():
    """Values come out resolved: YAML's 1e2 (a float) is the int 100 the engine loops over."""
    pruner = sfpk.create_pruner("sfpk", num_steps=1e2, momentum=0)
    assert pruner.options.num_steps == 100 and type(pruner.options.num_steps) is int
    assert type(pruner.options.momentum) is float


def test_a_diverged_particle_score_stops_sfpk_naming_the_step(monkeypatch):
    """NaN/inf reaching the score S (diverged dynamics) stops before selection, not deep in it."""
    from sfpk.pruners.particles.engine import ParticleSystem

    original = ParticleSystem.step

    def diverging(self, draws, trace=None):
        record = original(self, draws, trace)
        self.scores[0] = float("inf")
        return record

    monkeypatch.setattr(ParticleSystem, "step", diverging)
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.NonFiniteError, match="score S holds NaN or inf after step 2"):
        sfpk.prune(model, data, method="sfpk", sparsity=0.5, num_steps=2, num_particles=2)
