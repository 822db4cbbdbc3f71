"""Plots of a run directory and the multi-run report."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from sfpk.errors import CheckpointError
from sfpk.masks.core import Masks
from sfpk.pipelines.plots import make_run_plots
from sfpk.pipelines.report import summarize_runs, write_report

PNG_MAGIC = b"\x89PNG"


def _write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fake_run(root, name, *, method, sparsity, seed, acc):
    run = root / name
    run.mkdir()
    summary = {
        "method": method,
        "sparsity": sparsity,
        "achieved_sparsity": sparsity,
        "seed": seed,
        "last_k_mean_test_acc": acc,
        "final_test_acc": acc,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [
        {
            "phase": phase,
            "epoch": e,
            "train_acc": 0.5 + e / 10,
            "val_acc": 0.4 + e / 10,
            "test_acc": 0.4 + e / 10,
            "train_loss": 1 - e / 10,
            "val_loss": 1.1 - e / 10,
            "test_loss": 1.1 - e / 10,
        }
        for phase, e in [("pretrain", 0), ("pretrain", 1), ("finetune", 0), ("finetune", 1)]
    ]
    _write_csv(run / "metrics.csv", rows)
    _write_csv(
        run / "sfpk_steps.csv",
        [
            {
                "step": t,
                "target_density": 1 - t / 10,
                "mean_loss": 1 / (t + 1),
                "mean_pairwise_distance": t / 5,
            }
            for t in range(5)
        ],
    )
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    masks = Masks.ones(model)
    masks.with_tensors({n: (torch.rand(m.shape) > 0.5).float() for n, m in masks.items()}).save(
        run / "masks.safetensors"
    )
    return run


def test_run_plots_are_written_and_are_pngs(tmp_path):
    """Learning curves, per-layer density and the SFPK trajectory are real PNG files."""
    run = _fake_run(tmp_path, "a", method="sfpk", sparsity=0.9, seed=0, acc=0.8)
    made = make_run_plots(run)
    names = sorted(p.name for p in made)
    assert names == ["layer_density.png", "learning_curves.png", "trajectory.png"]
    for path in made:
        assert path.read_bytes()[:4] == PNG_MAGIC and path.stat().st_size > 1000


def test_run_plots_skip_missing_files(tmp_path):
    """A run that has no SFPK steps (a baseline) gets the other plots, without an error."""
    run = _fake_run(tmp_path, "a", method="mag", sparsity=0.9, seed=0, acc=0.8)
    (run / "sfpk_steps.csv").unlink()
    assert sorted(p.name for p in make_run_plots(run)) == [
        "layer_density.png",
        "learning_curves.png",
    ]


def test_summary_groups_by_method_and_sparsity_with_mean_and_std(tmp_path):
    """Seeds of one (method, sparsity) are averaged; std is the sample std."""
    runs = [
        _fake_run(tmp_path, "s0", method="sfpk", sparsity=0.9, seed=0, acc=0.80),
        _fake_run(tmp_path, "s1", method="sfpk", sparsity=0.9, seed=1, acc=0.84),
        _fake_run(tmp_path, "m0", method="mag", sparsity=0.9, seed=0, acc=0.70),
    ]
    md = write_report(runs, tmp_path / "report")
    from sfpk.pipelines.report import load_summaries

    rows = {r["method"]: r for r in summarize_runs(load_summaries(runs))}
    assert rows["sfpk"]["mean"] == pytest.approx(0.82)
    assert rows["sfpk"]["std"] == pytest.approx(0.0282842712)
    assert rows["sfpk"]["seeds"] == [0, 1] and rows["mag"]["runs"] == 1
    text = md.read_text()
    assert "| sfpk | 0.9000 | 0.9000 | 0, 1 | 82.00 ± 2.83 % |" in text
    assert "| mag | 0.9000 | 0.9000 | 0 | 70.00 ± 0.00 % |" in text
    figure = tmp_path / "report" / "accuracy_vs_sparsity.png"
    assert figure.read_bytes()[:4] == PNG_MAGIC
    assert (tmp_path / "report" / "report.csv").read_text().count("\n") == 3


def test_report_names_a_run_without_summary(tmp_path):
    """An unfinished run directory is a clear error, not a silently missing row."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="summary.json"):
        write_report([tmp_path / "empty"], tmp_path / "out")


def test_runs_of_different_settings_are_not_averaged_as_seeds():
    """Two data sets at the same (method, sparsity) give two rows, each naming its setting."""
    base = {"method": "mag", "sparsity": 0.9, "pipeline": "oneshot", "model": "mlp"}
    summaries = [
        {**base, "dataset": "digits", "seed": 0, "final_test_acc": 0.8, "_run_dir": "a"},
        {**base, "dataset": "mnist1d", "seed": 0, "final_test_acc": 0.4, "_run_dir": "b"},
    ]
    rows = {r["method"]: r["mean"] for r in summarize_runs(summaries)}
    assert rows == {"mag (digits)": 0.8, "mag (mnist1d)": 0.4}


def _lm_summary(run_dir, *, method, seed, ppl, acc=0.5):
    return {"pipeline": "oneshot", "dataset": "tinytext", "model": "lm", "method": method,
            "task": "language_model", "sparsity": 0.5, "achieved_sparsity": 0.5, "seed": seed,
            "final_test_acc": acc, "final_test_ppl": ppl + 1.0, "last_k_mean_test_ppl": ppl,
            "_run_dir": run_dir}  # fmt: skip


def test_language_model_runs_report_their_test_perplexity():
    """LM rows carry mean/std perplexity (last-k first, as for accuracy); others None."""
    summaries = [
        _lm_summary("a", method="sfpk", seed=0, ppl=4.0),
        _lm_summary("b", method="sfpk", seed=1, ppl=6.0),
    ]
    (row,) = summarize_runs(summaries)
    assert row["ppl_mean"] == pytest.approx(5.0) and row["ppl_std"] == pytest.approx(2**0.5)
    assert row["mean"] == pytest.approx(0.5)  # token accuracy stays the accuracy column
    classification = {"method": "mag", "sparsity": 0.5, "seed": 0, "final_test_acc": 0.9,
                      "_run_dir": "c"}  # fmt: skip
    assert summarize_runs([classification])[0]["ppl_mean"] is None


def test_report_table_has_a_perplexity_column_only_with_language_model_runs(tmp_path):
    """Image reports keep their five columns; an LM run adds perplexity (mean ± std)."""
    lm = tmp_path / "lm"
    lm.mkdir()
    summary = _lm_summary(str(lm), method="snip", seed=0, ppl=3.25)
    del summary["_run_dir"]
    (lm / "summary.json").write_text(json.dumps(summary))
    text = write_report([lm], tmp_path / "report").read_text()
    assert "perplexity (mean ± std) |" in text.splitlines()[0]
    assert "|---|---|---|---|---|---|" in text
    assert "| snip | 0.5000 | 0.5000 | 0 | 50.00 ± 0.00 % | 3.250 ± 0.000 |" in text
    image = _fake_run(tmp_path, "img", method="mag", sparsity=0.9, seed=0, acc=0.7)
    assert "perplexity" not in write_report([image], tmp_path / "report2").read_text()


def _cost_run(root, name, *, seed, nonzero_params, slim=None):
    """A fake run whose summary carries the cost figures of sfpk.cost_summary."""
    run = root / name
    run.mkdir()
    summary = {
        "method": "mag", "sparsity": 0.5, "achieved_sparsity": 0.5, "seed": seed,
        "final_test_acc": 0.9, "params": 272474, "nonzero_params": nonzero_params,
        "macs": 40_550_000, "nonzero_macs": 20_000_000,
    }  # fmt: skip
    if slim is not None:
        summary["slim_params"], summary["slim_macs"] = slim
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_report_shows_parameter_and_mac_counts(tmp_path):
    """Cost figures of summary.json appear as 'nonzero / all', averaged over seeds."""
    runs = [
        _cost_run(tmp_path, "a", seed=0, nonzero_params=136000),
        _cost_run(tmp_path, "b", seed=1, nonzero_params=138000),
    ]
    text = write_report(runs, tmp_path / "report").read_text()
    assert "params (nonzero / all) | MACs (nonzero / all) |" in text.splitlines()[0]
    assert "| 137.0k / 272.5k | 20.0M / 40.5M |" in text
    assert "slim" not in text


def test_report_shows_slim_counts_when_runs_have_them(tmp_path):
    """A structured run's slim parameters and MACs get their own column."""
    run = _cost_run(tmp_path, "a", seed=0, nonzero_params=136000, slim=(130500, 19_800_000))
    text = write_report([run], tmp_path / "report").read_text()
    assert text.splitlines()[0].endswith("| slim params / MACs |")
    assert text.splitlines()[2].endswith("| 130.5k / 19.8M |")


def test_report_without_cost_figures_keeps_its_columns(tmp_path):
    """Summaries written before costs existed: no cost columns, no error."""
    run = _fake_run(tmp_path, "old", method="mag", sparsity=0.9, seed=0, acc=0.7)
    header = write_report([run], tmp_path / "report").read_text().splitlines()[0]
    assert "params" not in header and "MACs" not in header


def test_runs_with_different_structure_scope_or_round_to_are_not_averaged_as_seeds(tmp_path):
    """Same method and sparsity, other masks: separate rows, each labelled with its setting."""
    base = {"method": "mag", "sparsity": 0.5, "pipeline": "oneshot", "seed": 0}
    settings = [
        ("filter", "global", 16, 0.70),
        ("filter", "global", 16, 0.72),  # a second seed of the first setting
        ("filter", "global", None, 0.80),
        ("filter", "local", 16, 0.60),
        ("channel", "global", 16, 0.50),
    ]
    runs = []
    for index, (structure, scope, round_to, acc) in enumerate(settings):
        run = tmp_path / f"r{index}"
        run.mkdir()
        summary = {**base, "structure": structure, "scope": scope, "round_to": round_to,
                   "seed": index, "final_test_acc": acc}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    from sfpk.pipelines.report import load_summaries

    rows = {r["method"]: r for r in summarize_runs(load_summaries(runs))}
    assert {m: r["runs"] for m, r in rows.items()} == {
        "mag (filter global round_to=16)": 2,
        "mag (filter global round_to=1)": 1,
        "mag (filter local round_to=16)": 1,
        "mag (channel global round_to=16)": 1,
    }
    assert rows["mag (filter global round_to=16)"]["mean"] == pytest.approx(0.71)
    assert rows["mag (filter global round_to=16)"]["round_to"] == 16
    text = write_report(runs, tmp_path / "report").read_text()
    assert "| mag (filter global round_to=1) | 0.5000 |" in text
