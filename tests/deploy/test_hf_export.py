"""Hugging Face checkpoints out (``export_hf``, ``sfpk export --format hf``): transformers
loads them alone and computes the masked model's logits, with the zeros in the file.

Everything is offline: tiny random configs written with ``save_pretrained`` to tmp folders.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

import sfpk
from hf_helpers import CLASSES, SENTENCES, VISION, VOCAB, hf_configs, write_hf_folder
from hf_helpers import auto_class as _auto
from sfpk.cli import main
from sfpk.deploy.hf_export import EXPORT_INFO, export_hf
from sfpk.errors import ConfigError
from sfpk.models import create

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for kind in hf_configs():
        out[kind] = tmp_path_factory.mktemp(kind)
        write_hf_folder(out[kind], kind)
    return out


def _inputs(kind: str):
    gen = torch.Generator().manual_seed(1)
    if kind in VISION:
        return torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, CLASSES, (4,))
    ids = torch.randint(0, VOCAB, (4, 10), generator=gen)
    return ids, ids


def _pruned(folders, kind: str, structure: str = "unstructured", scope: str = "global"):
    model = create(f"hf:{folders[kind]}", num_classes=CLASSES if kind in VISION else VOCAB)
    masks = sfpk.prune(
        model, [_inputs(kind)], method="mag", sparsity=0.5, structure=structure, scope=scope
    )
    return model, masks


def _hf_logits(hf: nn.Module, kind: str):
    x, _ = _inputs(kind)
    with torch.no_grad():
        return (hf(pixel_values=x) if kind in VISION else hf(input_ids=x)).logits


def _masked_logits(model, masks, kind: str):
    x, _ = _inputs(kind)
    with torch.no_grad():
        return masks.apply(copy.deepcopy(model)).eval()(x)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "vit", "deit", "swin"])
def test_export_loads_in_transformers_with_the_masked_logits(folders, tmp_path, kind):
    """from_pretrained on the folder alone gives sfpk's masked-model logits (1e-5)."""
    model, masks = _pruned(folders, kind)
    export_hf(model, tmp_path / "out", masks)
    loaded = _auto(kind).from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        _hf_logits(loaded, kind), _masked_logits(model, masks, kind), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kind", ["gpt2", "llama", "vit"])
def test_pruned_weights_are_zeros_in_place(folders, tmp_path, kind):
    """The loaded model holds +0.0 exactly where the masks pruned, and nowhere else (GPT-2's
    Conv1D weights read transposed)."""
    model, masks = _pruned(folders, kind)
    export_hf(model, tmp_path / "out", masks)
    loaded = dict(_auto(kind).from_pretrained(tmp_path / "out").named_parameters())
    for name, mask in masks.items():
        tensor = loaded[name.removeprefix("hf.")].detach()
        if kind == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tensor = tensor.t()  # Conv1D holds [in, out]
        pruned = mask.expand_as(tensor) == 0
        assert pruned.any()
        assert bool((tensor[pruned] == 0).all()) and not torch.signbit(tensor[pruned]).any()
        assert bool((tensor[~pruned] != 0).all())


@pytest.mark.parametrize("kind", ["gpt2", "llama", "vit"])
def test_file_has_the_source_layout_and_the_zeros(folders, tmp_path, kind):
    """model.safetensors has the source checkpoint's tensor names and shapes, and as many
    exact zeros as the masks removed."""
    model, masks = _pruned(folders, kind)
    export_hf(model, tmp_path / "out", masks)
    out = load_file(tmp_path / "out" / "model.safetensors")
    src = load_file(folders[kind] / "model.safetensors")
    assert {n: t.shape for n, t in out.items()} == {n: t.shape for n, t in src.items()}
    zeros = sum(int((t == 0).sum()) - int((src[n] == 0).sum()) for n, t in out.items())
    removed = sum(int((m.expand(masks.shapes[n]) == 0).sum()) for n, m in masks.items())
    assert zeros == removed


def test_gpt2_export_has_conv1d_weights(folders, tmp_path):
    """GPT-2's c_attn is stored as [in, out], as transformers' Conv1D expects."""
    model, masks = _pruned(folders, "gpt2")
    export_hf(model, tmp_path / "out", masks)
    state = load_file(tmp_path / "out" / "model.safetensors")
    assert tuple(state["transformer.h.0.attn.c_attn.weight"].shape) == (16, 48)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(loaded.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_tokenizer_files_are_copied(folders, tmp_path):
    """The source folder's tokenizer files come along, and AutoTokenizer reads them."""
    model, masks = _pruned(folders, "llama")
    result = export_hf(model, tmp_path / "out", masks)
    assert "tokenizer.json" in result.tokenizer_files
    for name in result.tokenizer_files:
        assert (tmp_path / "out" / name).read_bytes() == (folders["llama"] / name).read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    source = transformers.AutoTokenizer.from_pretrained(folders["llama"])
    assert tok.encode(SENTENCES[0]) == source.encode(SENTENCES[0])


def test_config_is_the_source_config(folders, tmp_path):
    """Without slimming the exported config.json describes the same model as the source's."""
    model, masks = _pruned(folders, "llama")
    export_hf(model, tmp_path / "out", masks)
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    src = json.loads((folders["llama"] / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    assert {k: out[k] for k in keys} == {k: src[k] for k in keys}
    assert out["architectures"] == src["architectures"]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "vit"])
def test_equal_neuron_widths_export_a_slim_model(folders, tmp_path, kind):
    """Local neuron masks (same count per layer) shrink the config's MLP width; outputs equal."""
    model, masks = _pruned(folders, kind, structure="neuron", scope="local")
    result = export_hf(model, tmp_path / "out", masks)
    assert result.slimmed and result.note is None
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    key = "n_inner" if kind == "gpt2" else "intermediate_size"
    width = 64 if kind == "gpt2" else 32
    assert config[key] == width // 2
    loaded = _auto(kind).from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        _hf_logits(loaded, kind), _masked_logits(model, masks, kind), atol=1e-5, rtol=0
    )
    assert json.loads((tmp_path / "out" / EXPORT_INFO).read_text())["slimmed"] is True


def _uneven_neuron_masks(model, second: int = 0):
    """Neuron masks removing neurons 0-7 of layer 0's MLP and ``second`` of layer 1's."""
    masks = sfpk.prune(
        model, [_inputs("llama")], method="mag", sparsity=0.5, structure="neuron", scope="local"
    )
    tensors = {n: torch.ones_like(m) for n, m in masks.items()}
    for name in tensors:
        for layer, count in ((0, 8), (1, second)):
            if f".layers.{layer}.mlp." in name:
                tensors[name].view(-1)[:count] = 0
    return masks.with_tensors(tensors)


def test_partly_even_neuron_widths_slim_to_the_common_width(folders, tmp_path):
    """8 and 3 neurons pruned: 3 go from both layers (width 29), 5 stay zeros, noted."""
    model = create(f"hf:{folders['llama']}", num_classes=VOCAB)
    masks = _uneven_neuron_masks(model, second=3)
    result = export_hf(model, tmp_path / "out", masks)
    assert result.slimmed and "5 pruned neurons stay zeros" in result.note
    assert json.loads((tmp_path / "out" / "config.json").read_text())["intermediate_size"] == 29
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        _hf_logits(loaded, "llama"), _masked_logits(model, masks, "llama"), atol=1e-5, rtol=0
    )


def test_uneven_neuron_widths_stay_dense_with_a_note(folders, tmp_path, caplog):
    """Widths that differ per layer cannot be one intermediate_size: dense with zeros, and
    the reason is logged and written into sfpk_export.json."""
    model = create(f"hf:{folders['llama']}", num_classes=VOCAB)
    masks = _uneven_neuron_masks(model)
    with caplog.at_level("WARNING", logger="sfpk.deploy.hf_export"):
        result = export_hf(model, tmp_path / "out", masks)
    assert not result.slimmed and "intermediate_size" in result.note
    assert "not (fully) slimmed" in caplog.text
    info = json.loads((tmp_path / "out" / EXPORT_INFO).read_text())
    assert info["slimmed"] is False and info["note"] == result.note
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["intermediate_size"] == 32
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        _hf_logits(loaded, "llama"), _masked_logits(model, masks, "llama"), atol=1e-5, rtol=0
    )


def test_llama_heads_pruned_evenly_export_fewer_heads(folders, tmp_path):
    """Local head masks on Llama (head_dim in its config): one key/value group goes from
    every layer, the config says so, and the logits stay the masked model's."""
    model, masks = _pruned(folders, "llama", structure="head", scope="local")
    result = export_hf(model, tmp_path / "out", masks)
    assert result.slimmed and result.note is None
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (1, 1)
    assert config["head_dim"] == 8
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.model.layers[0].self_attn.q_proj.weight.shape == (8, 16)
    torch.testing.assert_close(
        _hf_logits(loaded, "llama"), _masked_logits(model, masks, "llama"), atol=1e-5, rtol=0
    )


def test_gpt2_head_masks_stay_dense_with_a_note(folders, tmp_path):
    """GPT-2's head size is n_embd / n_head (no head_dim): pruned heads stay zeros in place,
    the note says why, and the model still loads with the masked logits."""
    model, masks = _pruned(folders, "gpt2", structure="head", scope="local")
    result = export_hf(model, tmp_path / "out", masks)
    assert not result.slimmed and "head_dim" in result.note
    state = load_file(tmp_path / "out" / "model.safetensors")
    proj = state["transformer.h.0.attn.c_proj.weight"]  # Conv1D [in, out]: head rows zero
    assert int((proj == 0).all(dim=1).sum()) == 8
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        _hf_logits(loaded, "gpt2"), _masked_logits(model, masks, "gpt2"), atol=1e-5, rtol=0
    )


def test_export_leaves_the_model_unchanged(folders, tmp_path):
    """The caller's model keeps its weights (masks are baked into a copy) and its Linears."""
    model, masks = _pruned(folders, "gpt2")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    export_hf(model, tmp_path / "out", masks)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert isinstance(model.hf.transformer.h[0].attn.c_attn, nn.Linear)


def test_non_hf_model_is_refused(tmp_path):
    """A zoo model is not an hf: model: the error names it and the formats that apply."""
    with pytest.raises(ConfigError, match="Sequential|MLP|not .*safetensors"):
        export_hf(create("mlp", num_classes=3, input_shape=(4,)), tmp_path / "out")


def test_existing_export_needs_overwrite(folders, tmp_path):
    """A second export into the same folder is refused unless overwrite=True."""
    model, masks = _pruned(folders, "llama")
    export_hf(model, tmp_path / "out", masks)
    with pytest.raises(ConfigError, match="overwrite"):
        export_hf(model, tmp_path / "out", masks)
    export_hf(model, tmp_path / "out", masks, overwrite=True)


def test_cli_refuses_format_hf_for_a_zoo_run(tmp_path, capsys):
    """`sfpk export --format hf` on a run of a zoo model: exit 2, naming the model and the
    formats allowed for it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("pipeline: oneshot\nmodel: {name: resnet20}\n")
    (run / "model.safetensors").write_bytes(b"")
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "'resnet20'" in err and "--format safetensors or --format onnx" in err
    assert err.count("\n") == 1


def test_pipeline_run_exports_to_hf(folders, tmp_path):
    """A `sfpk oneshot` run of an hf: model (pruned, fine-tuned) exports with --format hf:
    transformers loads the run's final weights, zeros in place, tokenizer copied."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(SENTENCES[i % 3] for i in range(60)))
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main([
        "oneshot", "--data", f"text:{text}", "--data-option", "block_size=8",
        "--model", f"hf:{folders['llama']}", "--method", "mag", "--sparsity", "0.5",
        "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--prune-samples", "8",
        "--quiet", "--device", "cpu", "--no-plots", "--out", str(run),
    ]) == 0  # fmt: skip
    assert main(["export", str(run), "--out", str(out), "--format", "hf"]) == 0
    loaded = dict(transformers.AutoModelForCausalLM.from_pretrained(out).named_parameters())
    state = load_file(run / "model.safetensors")
    masks = sfpk.load_masks(run / "masks.safetensors")
    for name, mask in masks.items():
        weight = loaded[name.removeprefix("hf.")].detach()
        assert torch.equal(weight, state[name])
        assert bool((weight[mask.expand_as(weight) == 0] == 0).all())
    assert (out / "tokenizer.json").is_file()


def test_cli_refuses_sparse_with_format_hf(tmp_path, capsys):
    """--sparse stores sfpk's compressed tensors, which transformers cannot read: exit 2."""
    argv = ["export", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "hf", "--sparse"]
    assert main(argv) == 2
    assert "--sparse does not apply to --format hf" in capsys.readouterr().err


def test_swin_neurons_stay_dense_with_a_note(folders, tmp_path):
    """Swin's stages have different MLP widths (mlp_ratio, no one intermediate_size): the
    pruned neurons stay zeros in place, noted, and the logits are the masked model's."""
    model, masks = _pruned(folders, "swin", structure="neuron", scope="local")
    result = export_hf(model, tmp_path / "out", masks)
    assert not result.slimmed and "MLP widths [16, 32]" in result.note
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(
        _hf_logits(loaded.eval(), "swin"), _masked_logits(model, masks, "swin"), atol=1e-5, rtol=0
    )
