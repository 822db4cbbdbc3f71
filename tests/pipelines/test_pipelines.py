"""Pipelines end to end on sklearn digits with tiny budgets (a second or two each)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import sfpk
from sfpk import api
from sfpk.config.core import build_config
from sfpk.pipelines import start
from sfpk.selection.topk import round_sparsity
from sfpk.training.checkpoint import load_state_dict_file

SUMMARY_KEYS = {
    "method", "sparsity", "achieved_sparsity", "per_layer", "dense_test_acc", "pruned_test_acc",
    "final_test_acc", "last_k_mean_test_acc", "best_val_epoch", "best_val_test_acc",
    "prune_seconds", "finetune_seconds", "seconds", "seed",
}  # fmt: skip


def _rows(run_dir, phase=None):
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if phase is None or r["phase"] == phase]


def _run(pipeline, tmp_path, overrides):
    config = build_config(pipeline, overrides={**overrides, "run.out": str(tmp_path / "run")})
    return start(config), tmp_path / "run"


def test_oneshot_writes_run_directory_and_summary(tmp_path, tiny):
    """oneshot: pretrain -> prune -> BN recal -> fine-tune, with every artifact and summary key."""
    summary, run = _run("oneshot", tmp_path, tiny)
    assert SUMMARY_KEYS <= set(summary)
    assert (
        json.loads((run / "summary.json").read_text())["final_test_acc"]
        == summary["final_test_acc"]
    )
    for name in ("config.yaml", "dense.safetensors", "model.safetensors", "masks.safetensors"):
        assert (run / name).is_file()
    assert abs(summary["achieved_sparsity"] - 0.9) < 1e-3
    phases = [r["phase"] for r in _rows(run)]
    assert phases == ["pretrain"] * 2 + ["dense", "prune"] + ["finetune"] * 3


def test_final_model_has_exact_zeros_where_masks_prune(tmp_path, tiny):
    """The saved model must be the sparse one: masked entries exactly zero after fine-tuning."""
    _, run = _run("oneshot", tmp_path, tiny)
    weights = load_state_dict_file(run / "model.safetensors")
    masks = sfpk.load_masks(run / "masks.safetensors")
    for name, mask in masks.items():
        assert bool((weights[name][mask == 0] == 0).all())


def test_reported_accuracies_follow_protocol(tmp_path, tiny):
    """last-k mean and best-VAL epoch come from the fine-tuning rows; test never selects."""
    summary, run = _run("oneshot", tmp_path, {**tiny, "train.epochs": 4})
    rows = _rows(run, "finetune")
    test = [float(r["test_acc"]) for r in rows]
    val = [float(r["val_acc"]) for r in rows]
    best = val.index(max(val))
    assert summary["last_k_mean_test_acc"] == pytest.approx(sum(test[-2:]) / 2)
    assert summary["best_val_epoch"] == best
    assert summary["best_val_test_acc"] == pytest.approx(test[best])
    assert summary["final_test_acc"] == pytest.approx(test[-1])
    prune_row = _rows(run, "prune")[0]
    assert summary["pruned_test_acc"] == pytest.approx(float(prune_row["test_acc"]))


def test_pretrain_saves_best_validation_model(tmp_path, tiny):
    """pretrain keeps the best-VAL epoch's weights as model.safetensors."""
    summary, run = _run("pretrain", tmp_path, {**tiny, "pretrain.epochs": 3})
    val = [float(r["val_acc"]) for r in _rows(run, "pretrain")]
    assert summary["best_val_epoch"] == val.index(max(val))
    assert torch.equal(
        load_state_dict_file(run / "model.safetensors")["1.weight"],
        load_state_dict_file(run / "dense.safetensors")["1.weight"],
    )
    assert not (run / "masks.safetensors").exists()


def test_oneshot_from_checkpoint_skips_pretraining(tmp_path, tiny):
    """--checkpoint loads dense weights: no pretraining rows, same dense accuracy as its source."""
    source, source_dir = _run("pretrain", tmp_path / "a", tiny)
    summary, run = _run(
        "oneshot",
        tmp_path / "b",
        {**tiny, "model.checkpoint": str(source_dir / "model.safetensors")},
    )
    assert not _rows(run, "pretrain")
    assert summary["dense_test_acc"] == pytest.approx(source["final_test_acc"])


def test_oneshot_rounds_follow_exponential_targets(tmp_path, tiny):
    """K rounds without fine-tuning reach 1 - (1 - s)^((k+1)/K) each."""
    summary, run = _run("oneshot", tmp_path, {**tiny, "prune.rounds": 3})
    expected = [round_sparsity(0.9, k, 3) for k in range(3)]
    assert summary["round_sparsities"] == pytest.approx(expected, abs=2e-3)
    phases = [r["phase"] for r in _rows(run)]
    assert phases.count("prune") == 3 and "tune" not in phases


def test_iterative_prunes_monotone_masks_and_tunes_between_rounds(tmp_path, tiny, monkeypatch):
    """Each round passes the previous masks, so pruned entries never come back (spec §9.5)."""
    calls = []
    real = api.run_pruner

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append({n: m.clone() for n, m in result.masks.items()})
        return result

    monkeypatch.setattr(api, "run_pruner", spy)
    overrides = {
        **tiny, "prune.method": "rand", "prune.rounds": 3, "train.round_epochs": [1],
        "train.round_lr_end": [1e-3],
    }  # fmt: skip
    summary, run = _run("iterative", tmp_path, overrides)
    assert len(calls) == 3
    for before, after in zip(calls, calls[1:], strict=False):
        assert all(bool((after[n][before[n] == 0] == 0).all()) for n in before)
    phases = [r["phase"] for r in _rows(run)]
    assert phases.count("tune") == 2 and phases.count("finetune") == 3
    assert abs(summary["achieved_sparsity"] - 0.9) < 1e-3


def test_sfpk_run_writes_step_history(tmp_path, tiny):
    """SFPK's per-step records land in sfpk_steps.csv next to summary.json."""
    overrides = {
        **tiny, "prune.method": "sfpk", "prune.options": {"num_steps": 4, "num_particles": 2},
        "prune.batch_size": 128,
    }  # fmt: skip
    summary, run = _run("oneshot", tmp_path, overrides)
    with (run / "sfpk_steps.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and rows[0]["round"] == "0"
    assert summary["method"] == "sfpk"


def test_filter_run_reports_the_unpruned_output_layer(tmp_path, tiny):
    """A filter run keeps the classifier's class rows and says so in summary.json and in the
    mask file; with prune.protect_output=False (the reference) the classifier is masked."""
    overrides = {**tiny, "prune.structure": "filter", "prune.scope": "local", "prune.sparsity": 0.5}
    summary, run = _run("oneshot", tmp_path, overrides)  # MLP: Flatten, Linear, ReLU, Linear
    assert summary["unpruned_output_layers"] == ["3"]
    assert json.loads((run / "summary.json").read_text())["unpruned_output_layers"] == ["3"]
    masks = sfpk.load_masks(run / "masks.safetensors")
    assert list(masks) == ["1.weight"] and masks.unpruned_outputs == ["3"]
    plain, plain_run = _run(
        "oneshot", tmp_path / "plain", {**overrides, "prune.protect_output": False}
    )
    assert plain["unpruned_output_layers"] == []
    assert list(sfpk.load_masks(plain_run / "masks.safetensors")) == ["1.weight", "3.weight"]
