"""``sfpk prune``: layer-wise pruning of a pretrained LM, no training; its run folder and its
Hugging Face export. Offline: a tiny random Llama and a word-level tokenizer in tmp folders.

The end-to-end tests use :mod:`sfpk.llm` (``prune_layerwise``, ``perplexity``).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from hf_helpers import SENTENCES, VOCAB, write_hf_folder
from sfpk.cli import main
from sfpk.pipelines.llm_prune import SUMMARY_KEYS

pytestmark = pytest.mark.usefixtures("one_thread")

SEQLEN = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny Llama folder (with tokenizer) and a text file that tokenizes with it."""
    root = tmp_path_factory.mktemp("prune")
    write_hf_folder(root / "llama", "llama")
    words = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(60))
    (root / "text.txt").write_text(words)
    return root


def _argv(inputs, out, *extra: str) -> list[str]:
    return [
        "prune", "--model", f"hf:{inputs / 'llama'}", "--data", f"text:{inputs / 'text.txt'}",
        "--out", str(out), "--calibration-samples", "4", "--calibration-seqlen", str(SEQLEN),
        "--quiet", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sparsity", "1.5"], "--sparsity 1.5"),
        (["--sparsity", "0"], "--sparsity 0.0"),
        (["--structure", "2:4", "--sparsity", "0.3"], "--sparsity 0.3 differs"),
        (["--structure", "neuron", "--sparsity", "0.5"], "'neuron'"),
        (["--structure", "4:2", "--sparsity", "0.5"], "0 < N < M"),
        (["--method", "snip", "--sparsity", "0.5"], "'snip'"),
        (["--sparsity", "0.5", "--calibration-samples", "0"], "--calibration-samples 0"),
        (["--sparsity", "0.5", "--calibration-seqlen", "1"], "--calibration-seqlen 1"),
        (["--sparsity", "0.5", "--data-option", "block_size=4"], "block_size"),
        (["--sparsity", "0.5", "--data-option", "colour=red"], "colour"),
        (["--sparsity", "0.5", "--seed", "-1"], "--seed -1"),
        (["--sparsity", "0.5", "--device", "cuda:7"], "cuda:7"),
        ([], "--sparsity is required"),
        (["--sparsity", "0.5", "--option", "colour=red"], "takes no option 'colour'"),
        (["--sparsity", "0.5", "--calibration-seqlen", "64"], "64"),
    ],
)
def test_bad_values_stop_before_any_work(inputs, tmp_path, capsys, extra, needle):
    """A bad flag value: exit 2, one line naming it, and no run folder written."""
    if needle == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "run"
    assert main(_argv(inputs, out, *extra)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("sfpk: error:")
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "data", "needle"),
    [
        ("resnet20", None, "'resnet20'"),
        ("hf:/no/such/folder", None, "no such folder"),
        (None, "mnist1d", "'mnist1d' is a classification"),
        (None, "text:/no/such.txt", "/no/such.txt"),
    ],
)
def test_model_and_data_must_be_an_hf_lm_and_text(inputs, tmp_path, capsys, model, data, needle):
    """--model must be hf:, --data a language-model data set that exists: one-line errors."""
    argv = _argv(inputs, tmp_path / "run", "--sparsity", "0.5")
    if model is not None:
        argv[argv.index("--model") + 1] = model
    if data is not None:
        argv[argv.index("--data") + 1] = data
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_existing_run_needs_overwrite(inputs, tmp_path, capsys):
    """An existing run folder is refused without --overwrite; a non-run folder always."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("command: prune\n")
    assert main(_argv(inputs, run, "--sparsity", "0.5")) == 2
    assert "--overwrite" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_argv(inputs, other, "--sparsity", "0.5")) == 2
    assert "non-run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pruned_run(inputs):
    """``sfpk prune ... --method sparsegpt --structure 2:4`` on the tiny Llama."""
    out = inputs / "run"
    assert main(_argv(inputs, out, "--method", "sparsegpt", "--structure", "2:4")) == 0
    return out


def test_prune_writes_the_run_folder(pruned_run):
    """The run folder holds config.yaml, summary.json with every key, masks and model."""
    names = {p.name for p in pruned_run.iterdir()}
    assert {"config.yaml", "summary.json", "masks.safetensors", "model.safetensors"} <= names
    summary = json.loads((pruned_run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["sparsity"] == pytest.approx(0.5)
    assert summary["calibration_samples"] == 4 and summary["calibration_seqlen"] == SEQLEN
    assert 1 < summary["dense_ppl"] < 10 * VOCAB and 1 < summary["pruned_ppl"]
    assert summary["seconds"] >= summary["prune_seconds"] > 0
    config = yaml.safe_load((pruned_run / "config.yaml").read_text())
    assert config["command"] == "prune" and config["prune"]["structure"] == "2:4"


def test_pruned_weights_are_2_of_4(pruned_run):
    """Every pruned layer of model.safetensors keeps at most 2 of each 4 input weights."""
    state = load_file(pruned_run / "model.safetensors")
    layers = [n for n in state if n.endswith(("proj.weight",)) and ".layers." in n]
    assert layers
    for name in layers:
        groups = (state[name] != 0).reshape(state[name].shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2, name


def test_prune_run_exports_to_hf(pruned_run, tmp_path):
    """`sfpk export RUN --format hf` on the prune run: transformers loads it and gives the
    run's model's logits, with the 2:4 zeros in place."""
    out = tmp_path / "hf"
    assert main(["export", str(pruned_run), "--out", str(out), "--format", "hf"]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    state = load_file(pruned_run / "model.safetensors")
    weights = dict(loaded.named_parameters())
    for name, tensor in state.items():
        if name.startswith("hf.") and name[3:] in weights:
            assert torch.equal(weights[name[3:]].detach(), tensor), name
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["resume"], "no checkpoints to resume"), (["export", "--out", "x"], "--format hf")],
)
def test_pipeline_tools_refuse_a_prune_run(pruned_run, capsys, argv, needle):
    """resume and a safetensors export cannot read a prune run's config: one line says so."""
    command, *rest = argv
    rest = [str(pruned_run.parent / a) if a == "x" else a for a in rest]
    assert main([command, str(pruned_run), *rest]) == 2
    err = capsys.readouterr().err
    assert "written by `sfpk prune`" in err and needle in err and err.count("\n") == 1
