"""Language-model runs end to end: next-token loss in training, pruning and the summary.

The causal LM is a test-local model (:mod:`lm_helpers`), registered only while each test runs.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import sfpk
from lm_helpers import TinyCausalLM, register_test_lm, write_tokenizer_json
from sfpk.cli import main
from sfpk.config.core import build_config
from sfpk.data import DataSplits, load_dataset, make_loader
from sfpk.errors import ConfigError
from sfpk.losses import next_token_loss
from sfpk.pipelines import Context, start
from sfpk.pipelines.context import model_options
from sfpk.pipelines.run import Run
from sfpk.training.optimizers import OptimizerConfig

PPL_KEYS = {"dense_test_ppl", "pruned_test_ppl", "final_test_ppl", "last_k_mean_test_ppl",
            "best_val_test_ppl"}  # fmt: skip


@pytest.fixture
def lm(monkeypatch) -> str:
    """The registered name of the test-local causal LM."""
    return register_test_lm(monkeypatch)


@pytest.fixture
def text_file(tmp_path):
    """About 4 KB of repetitive text: 16-token blocks, 240 blocks."""
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{i} plus 1 is {i + 1}. " for i in range(250))[:4080])
    return path


def _tiny_lm(lm: str, dataset: str, **extra) -> dict:
    return {
        "data.dataset": dataset, "data.options": {"block_size": 16}, "data.eval_batch_size": 64,
        "model.name": lm, "model.options": {"width": 16},
        "pretrain.epochs": 2, "pretrain.optimizer": "adam", "pretrain.lr": 0.01,
        "pretrain.batch_size": 32, "pretrain.nesterov": False,
        "train.epochs": 2, "train.warmup_epochs": 0, "train.optimizer": "adam", "train.lr": 0.003,
        "train.batch_size": 32, "train.report_last_k": 2,
        "prune.sparsity": 0.2, "prune.batch_size": 16, "prune.num_samples": 48,
        "run.quiet": True, "run.device": "cpu", "run.plots": False, **extra,
    }  # fmt: skip


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_oneshot_cli_on_a_text_file_writes_perplexities(tmp_path, lm, text_file, capsys):
    """`sfpk oneshot --data text:FILE` with SNIP (gradients of the next-token loss) reports ppl."""
    out = tmp_path / "run"
    status = main([
        "oneshot", "--data", f"text:{text_file}", "--data-option", "block_size=16",
        "--model", lm, "--model-option", "width=16", "--method", "snip", "--sparsity", "0.2",
        "--pretrain-epochs", "2", "--pretrain-optimizer", "adam", "--pretrain-lr", "0.01",
        "--no-pretrain-nesterov", "--pretrain-batch-size", "32", "--epochs", "1",
        "--warmup-epochs", "0", "--optimizer", "adam", "--lr", "0.003", "--batch-size", "32",
        "--prune-samples", "48", "--prune-batch-size", "16", "--quiet", "--device", "cpu",
        "--no-plots", "--out", str(out),
    ])  # fmt: skip
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "language_model" and PPL_KEYS <= set(summary)
    assert 1.0 < summary["final_test_ppl"] < 256.0  # clearly better than uniform bytes
    rows = _rows(out)
    dense, pruned, final = (
        next(r for r in rows if r["phase"] == phase) for phase in ("dense", "prune", "finetune")
    )
    assert summary["dense_test_ppl"] == pytest.approx(math.exp(float(dense["test_loss"])))
    assert summary["pruned_test_ppl"] == pytest.approx(float(pruned["test_ppl"]))
    assert summary["final_test_ppl"] == pytest.approx(math.exp(float(final["test_loss"])))
    assert float(final["val_ppl"]) == pytest.approx(math.exp(float(final["val_loss"])))
    assert abs(summary["achieved_sparsity"] - 0.2) < 1e-3
    assert "final test ppl" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["sfpk", "grasp"])
def test_particle_and_second_order_methods_prune_a_language_model(tmp_path, lm, method):
    """SFPK (particle energies) and GraSP (Hessian-gradient) run through next_token_loss."""
    options = {"num_steps": 2, "num_particles": 2} if method == "sfpk" else {"batches": 2}
    overrides = _tiny_lm(lm, "tinytext", **{
        "data.options": {"block_size": 16, "num_chars": 6000}, "pretrain.epochs": 1,
        "train.epochs": 1, "train.report_last_k": 1, "prune.method": method,
        "prune.options": options, "run.out": str(tmp_path / "run"),
    })  # fmt: skip
    summary = start(build_config("oneshot", overrides=overrides))
    assert summary["method"] == method and abs(summary["achieved_sparsity"] - 0.2) < 1e-3
    assert math.isfinite(summary["pruned_test_ppl"]) and math.isfinite(summary["final_test_ppl"])


def test_model_selection_uses_validation_loss_for_language_models(tmp_path, lm, text_file):
    """pretrain keeps the epoch of lowest val loss; its test ppl is best_val_test_ppl."""
    overrides = _tiny_lm(lm, f"text:{text_file}", **{
        "pretrain.epochs": 3, "pretrain.lr": 0.05, "run.out": str(tmp_path / "run"),
    })  # fmt: skip
    summary = start(build_config("pretrain", overrides=overrides))
    rows = _rows(tmp_path / "run")
    losses = [float(r["val_loss"]) for r in rows]
    best = losses.index(min(losses))
    assert summary["best_val_epoch"] == best
    assert summary["best_val_test_ppl"] == pytest.approx(float(rows[best]["test_ppl"]))
    assert summary["final_test_ppl"] == summary["best_val_test_ppl"]


def test_pruning_data_budget_counts_blocks_of_language_model_data(tmp_path, lm, text_file):
    """prune.num_samples = 48 blocks of [block_size] token ids, a seeded subset of train."""
    config = build_config("oneshot", overrides=_tiny_lm(lm, f"text:{text_file}", **{
        "run.out": str(tmp_path / "run"),
    }))  # fmt: skip
    ctx = Context(Run.create(config))
    try:
        batches = list(ctx.pruning_loader("prune:0"))
    finally:
        ctx.run.close()
    assert sum(len(x) for x, _ in batches) == 48
    assert all(x.dtype == torch.int64 and x.shape[1:] == (16,) for x, _ in batches)
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)


def test_vocabulary_of_a_tokenizer_file_sizes_the_model(tmp_path, lm):
    """A word-level tokenizer of V words builds a model with V inputs and V logits."""
    write_tokenizer_json(tmp_path / "tokenizer.json", ["the cat sat on the mat", "a dog ran"])
    corpus = tmp_path / "words.txt"
    corpus.write_text("the cat sat on the mat a dog ran " * 40)
    tokenizer = str(tmp_path / "tokenizer.json")
    splits = load_dataset(f"text:{corpus}", block_size=8, tokenizer=tokenizer)
    options = model_options(lm, {"width": 16}, splits)
    assert options == {"width": 16, "vocab_size": splits.num_classes}
    model = sfpk.models.create(lm, num_classes=splits.num_classes, input_shape=(8,), **options)
    x, _ = splits.train[0]
    assert model(x[None]).shape == (1, 8, splits.num_classes)
    with pytest.raises(ConfigError, match="smaller than the vocabulary"):
        model_options(lm, {"vocab_size": 3}, splits)
    images = DataSplits("c", [], [], [], num_classes=3, input_shape=(2,))
    assert model_options(lm, {"width": 16}, images) == {"width": 16}  # classification: as given
    assert model_options("tv:gpt", {}, splits) == {}  # external models keep their vocabulary


def test_sfpk_prune_api_takes_gradients_through_next_token_loss():
    """sfpk.prune(..., loss_fn=next_token_loss) scores an LM; the default loss cannot."""
    torch.manual_seed(0)
    model = TinyCausalLM(256, 16, width=16)
    splits = load_dataset("tinytext", block_size=16, num_chars=5000)
    loader = make_loader(splits.train, batch_size=8, shuffle=False)
    masks = sfpk.prune(model, loader, method="snip", sparsity=0.5, loss_fn=next_token_loss)
    assert abs(masks.sparsity() - 0.5) < 1e-3
    with pytest.raises((RuntimeError, ValueError)):
        sfpk.prune(model, loader, method="snip", sparsity=0.5)


@pytest.mark.slow  # trains 3 epochs (a few seconds on one idle core)
def test_a_small_model_learns_tinytext_far_below_uniform_perplexity():
    """tinytext is learnable: a one-block LM of width 32 gets val perplexity < 12 (uniform 256)."""
    torch.manual_seed(0)
    splits = load_dataset("tinytext", block_size=32, num_chars=30_000)
    model = TinyCausalLM(256, 32, width=32)
    trainer = sfpk.Trainer(
        model, OptimizerConfig(optimizer="adam"), device=torch.device("cpu"), progress=False,
        task="language_model",
    )  # fmt: skip
    for epoch in range(3):
        loader = make_loader(splits.train, batch_size=32, shuffle=True, seed=epoch)
        trainer.train_epoch(loader, lr=3e-3)
    result = trainer.evaluate(make_loader(splits.val, batch_size=64, shuffle=False))
    assert result.perplexity < 12.0
