"""--tensorboard: the metrics also go to TensorBoard event files (extra sfpk[tensorboard])."""

from __future__ import annotations

import builtins
import csv

import pytest

from conftest import TINY_FLAGS
from sfpk.cli import main


def test_tensorboard_events_hold_the_metrics_rows(tmp_path):
    """Every metrics.csv row's test accuracy is logged as a scalar, in the same order."""
    from tensorboard.backend.event_processing import event_accumulator  # a dev dependency

    out = tmp_path / "run"
    assert (
        main(["oneshot", *TINY_FLAGS, "--method", "mag", "--tensorboard", "--out", str(out)]) == 0
    )
    events = list((out / "events").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    acc = event_accumulator.EventAccumulator(str(out / "events"))
    acc.Reload()
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    finetune = [float(r["test_acc"]) for r in rows if r["phase"] == "finetune"]
    logged = [e.value for e in acc.Scalars("finetune/test_acc")]
    assert logged == pytest.approx(finetune, rel=1e-6)


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Without the tensorboard package the run stops at once, naming the extra to install."""
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    status = main(["oneshot", *TINY_FLAGS, "--tensorboard", "--out", str(tmp_path / "run")])
    assert status == 2
    assert "sfpk[tensorboard]" in capsys.readouterr().err
