"""The run directory (config.yaml, metrics.csv, summary.json, files, rank-0 writes)."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch

import sfpk.pipelines.plots
from conftest import TINY
from helpers import mlp
from sfpk.config.core import Config, build_config, load_config
from sfpk.errors import CheckpointError, ConfigError
from sfpk.masks.core import Masks
from sfpk.pipelines import run as run_module
from sfpk.pipelines.run import METRIC_COLUMNS, Run, write_rows_csv
from sfpk.training.checkpoint import load_state_dict_file, read_latest_checkpoint


def _config(out) -> Config:
    return build_config("oneshot", overrides={**TINY, "run.out": str(out)})


def _row(epoch: int, **values) -> dict:
    return {"phase": "finetune", "round": 0, "epoch": epoch, "lr": 0.1 / (epoch + 1),
            "test_acc": 1 / 3 + epoch, **values}  # fmt: skip


def _csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


# -- creating and reopening -----------------------------------------------------------------
def test_create_writes_the_resolved_config_and_the_metrics_header(tmp_path):
    """`sfpk resume DIR` rebuilds the run from config.yaml alone, so it must hold everything."""
    config = _config(tmp_path / "run")
    run = Run.create(config)
    assert load_config(run.directory / "config.yaml") == config
    assert _csv(run.metrics_path) == (list(METRIC_COLUMNS), [])


def test_create_refuses_an_existing_run_without_overwrite(tmp_path):
    """A second command with the same --out must not wipe results; it points to resume."""
    run = Run.create(_config(tmp_path / "run"))
    run.log_metrics(_row(0))
    before = run.metrics_path.read_bytes()
    with pytest.raises(ConfigError, match="already exists.*sfpk resume"):
        Run.create(_config(tmp_path / "run"))
    assert run.metrics_path.read_bytes() == before


def test_overwrite_starts_the_run_over_from_an_empty_folder(tmp_path):
    """--overwrite removes the old run's files, so no stale checkpoint can be resumed."""
    old = Run.create(_config(tmp_path / "run"))
    old.log_metrics(_row(0))
    (old.directory / "summary.json").write_text("{}")
    new = Run.create(_config(tmp_path / "run"), overwrite=True)
    assert sorted(p.name for p in new.directory.iterdir()) == ["config.yaml", "metrics.csv"]
    assert _csv(new.metrics_path)[1] == []


def test_create_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    """A mistyped --out (e.g. the home folder) is refused even with --overwrite."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="non-empty non-run folder"):
        Run.create(_config(tmp_path), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_create_accepts_an_existing_empty_folder(tmp_path):
    """A folder made beforehand (e.g. by a job scheduler) is a valid new run directory."""
    run = Run.create(_config(tmp_path))
    assert (run.directory / "config.yaml").is_file()


def test_create_without_a_run_directory_is_a_config_error():
    """Every run writes files; without --out there is nowhere to write them."""
    with pytest.raises(ConfigError, match="--out"):
        Run.create(build_config("oneshot", overrides=TINY))


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    """Resuming a wrong folder is a clear error, not a run started from defaults."""
    with pytest.raises(CheckpointError, match="not a run directory"):
        Run.open(tmp_path)


def test_open_a_moved_run_writes_into_its_new_folder(tmp_path):
    """A run folder copied elsewhere resumes there, not into the folder it was created in."""
    Run.create(_config(tmp_path / "old"))
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    run = Run.open(tmp_path / "new")
    assert run.directory == tmp_path / "new" and run.config.run.out == str(tmp_path / "new")


# -- metrics.csv ----------------------------------------------------------------------------
def test_metric_rows_are_on_disk_as_soon_as_they_are_logged(tmp_path):
    """A killed run keeps every row it logged, and the values read back exactly."""
    run = Run.create(_config(tmp_path / "run"))
    run.log_metrics(_row(0))
    run.log_metrics(_row(1, val_acc=math.nan, sparsity=None))
    header, rows = _csv(run.metrics_path)  # read while the run is still open
    assert header == list(METRIC_COLUMNS) and len(rows) == 2
    assert float(rows[1]["lr"]) == 0.05 and float(rows[0]["test_acc"]) == 1 / 3
    assert rows[1]["val_acc"] == "nan" and rows[1]["sparsity"] == "" and rows[0]["seconds"] == ""


def test_an_unknown_metric_column_is_refused(tmp_path):
    """A misspelt column would silently vanish from the CSV; it is an error instead."""
    run = Run.create(_config(tmp_path / "run"))
    with pytest.raises(ValueError, match="test_accuracy"):
        run.log_metrics({"phase": "finetune", "test_accuracy": 0.5})
    assert _csv(run.metrics_path)[1] == []


def test_truncate_metrics_keeps_exactly_the_rows_a_checkpoint_covers(tmp_path):
    """On resume, rows logged after the last checkpoint are dropped so none appears twice."""
    run = Run.create(_config(tmp_path / "run"))
    for epoch in range(5):
        run.log_metrics(_row(epoch))
    kept = _csv(run.metrics_path)[1][:3]
    run.truncate_metrics(3)
    assert _csv(run.metrics_path) == (list(METRIC_COLUMNS), kept)
    run.log_metrics(_row(3))  # the resumed run appends after the kept rows
    assert [r["epoch"] for r in _csv(run.metrics_path)[1]] == ["0", "1", "2", "3"]
    run.truncate_metrics(0)
    assert _csv(run.metrics_path) == (list(METRIC_COLUMNS), [])


def test_write_rows_csv_uses_every_column_in_first_seen_order(tmp_path):
    """Per-step SFPK rows differ in their keys; none may be dropped or misaligned."""
    path = write_rows_csv(tmp_path / "steps.csv", [{"step": 0, "loss": 1.5}, {"step": 1, "G": 2}])
    assert _csv(path) == (
        ["step", "loss", "G"],
        [{"step": "0", "loss": "1.5", "G": ""}, {"step": "1", "loss": "", "G": "2"}],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steps.csv"]  # no .tmp left


# -- results --------------------------------------------------------------------------------
def test_summary_json_holds_plain_values_for_tensor_numpy_and_path_scalars(tmp_path):
    """summary.json is read by `sfpk report` and other tools: only plain JSON values in it."""
    run = Run.create(_config(tmp_path / "run"))
    summary = {"final_test_acc": torch.tensor(0.75), "per_layer": {"kept": np.int64(7)},
               "seconds": np.float64(2.5), "data": tmp_path, "rounds": None}  # fmt: skip
    path = run.write_summary(summary)
    assert json.loads(path.read_text()) == {
        "final_test_acc": 0.75, "per_layer": {"kept": 7}, "seconds": 2.5, "data": str(tmp_path),
        "rounds": None,
    }  # fmt: skip
    assert not path.with_name("summary.json.tmp").exists()


def test_summary_json_holds_multi_element_tensors_and_arrays_as_lists(tmp_path):
    """A per-round tensor or array in the summary becomes a JSON list (item() would raise)."""
    run = Run.create(_config(tmp_path / "run"))
    summary = {"ppl": torch.tensor([2.0, 3.5]), "counts": np.array([[1, 2], [3, 4]])}
    path = run.write_summary(summary)
    assert json.loads(path.read_text()) == {"ppl": [2.0, 3.5], "counts": [[1, 2], [3, 4]]}


def test_weights_masks_and_checkpoints_land_inside_the_run(tmp_path):
    """Relative paths are taken inside the run folder, whatever the working directory."""
    run = Run.create(_config(tmp_path / "run"))
    model = mlp()
    masks = Masks.ones(model)
    assert run.save_weights(model, "dense.safetensors") == run.directory / "dense.safetensors"
    assert load_state_dict_file(run.directory / "dense.safetensors").keys() == (
        model.state_dict().keys()
    )
    assert Masks.load(run.save_masks(masks), model).keys() == masks.keys()
    run.write_checkpoint(model, masks, {"step": 3})
    assert read_latest_checkpoint(run.checkpoints_dir).state == {"step": 3}


def test_a_plotting_failure_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    """The numbers are already written when plots are drawn; a plot bug must not fail the run."""
    run = Run.create(_config(tmp_path / "run"))

    def broken(run_dir):
        raise RuntimeError("no display")

    monkeypatch.setattr(sfpk.pipelines.plots, "make_run_plots", broken)
    with caplog.at_level(logging.WARNING, logger="sfpk.pipelines.run"):
        run.make_plots()
    assert "making plots failed" in caplog.text and "no display" in caplog.text


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    """Under torchrun every rank calls the writers; files written twice would be torn."""
    monkeypatch.setattr(run_module.distributed, "is_main", lambda: False)
    folder = tmp_path / "run"
    folder.mkdir()
    run = Run(folder, _config(folder))
    model = mlp()
    assert not run.writer
    run.log_metrics(_row(0))
    run.truncate_metrics(0)
    run.write_checkpoint(model, Masks.ones(model), {"step": 0})
    run.save_weights(model, "model.safetensors")
    run.save_masks(Masks.ones(model))
    run.write_rows("sfpk_steps.csv", [{"step": 0}])
    run.write_text("note.txt", "x")
    run.write_summary({"final_test_acc": 0.5})
    run.make_plots()
    assert list(folder.iterdir()) == []
