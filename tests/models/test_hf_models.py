"""``hf:<folder or id>`` models: loading, the logits wrapper, default masks, every method.

Everything is offline: tiny random transformers configs are built here and written with
``save_pretrained`` to a temporary folder, which ``hf:<folder>`` then loads.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

import sfpk
from helpers import tiny_options
from sfpk.cli.reference import HF_CHECKPOINTS, translate
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks
from sfpk.masks.prunable import prunable_parameters
from sfpk.models import create
from sfpk.models.hf import HFModel

CLASSES, VOCAB, TOKENS = 3, 40, 6
IMAGE = (1, 8, 8)


def _configs() -> dict[str, object]:
    """Tiny random configs of each family (a few thousand weights each)."""
    vit = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2)
    vit.update(num_attention_heads=2, intermediate_size=32, num_labels=CLASSES)
    swin = dict(image_size=8, patch_size=2, num_channels=1, embed_dim=8, depths=[1, 1])
    swin.update(num_heads=[2, 2], window_size=2, mlp_ratio=2.0, num_labels=CLASSES)
    tokens = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    gpt2 = dict(n_positions=16, n_embd=16, n_layer=2, n_head=2, **tokens)
    llama = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, **tokens)
    llama.update(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return {
        "vit": transformers.ViTConfig(**vit, architectures=["ViTForImageClassification"]),
        "deit_distilled": transformers.DeiTConfig(
            **vit, architectures=["DeiTForImageClassificationWithTeacher"]
        ),
        "swin": transformers.SwinConfig(**swin, architectures=["SwinForImageClassification"]),
        "gpt2": transformers.GPT2Config(**gpt2, architectures=["GPT2LMHeadModel"]),
        "llama": transformers.LlamaConfig(**llama, architectures=["LlamaForCausalLM"]),
    }


LANGUAGE_MODELS = {"gpt2", "llama"}
PRUNED = ["vit", "swin", "gpt2"]  # every method runs on these


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each tiny model, seeded and written with save_pretrained to its own folder."""
    out = {}
    for kind, config in _configs().items():
        torch.manual_seed(0)
        auto = (
            transformers.AutoModelForCausalLM
            if kind in LANGUAGE_MODELS
            else transformers.AutoModelForImageClassification
        )
        out[kind] = tmp_path_factory.mktemp(kind)
        auto.from_config(config).save_pretrained(out[kind])
    return out


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over every position: ``[B, T, V]`` logits, ``[B, T]`` targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _load(folders, kind: str, **options) -> nn.Module:
    classes = VOCAB if kind in LANGUAGE_MODELS else CLASSES
    return create(f"hf:{folders[kind]}", num_classes=classes, **options)


def _batches(kind: str, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    if kind in LANGUAGE_MODELS:
        ids = [torch.randint(0, VOCAB, (3, TOKENS), generator=gen) for _ in range(4)]
        return [(ids[0], ids[1]), (ids[2], ids[3])]
    return [
        (torch.randn(3, *IMAGE, generator=gen), torch.randint(0, CLASSES, (3,), generator=gen))
        for _ in range(2)
    ]


def _expected_prunable(model: HFModel) -> list[str]:
    """Every Linear weight of the model except an LM head, in model order."""
    head = model.hf.get_output_embeddings()
    return [
        f"{n}.weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head
    ]


@pytest.mark.parametrize("kind", sorted(_configs()))
def test_wrapper_returns_the_models_own_logits(folders, kind):
    """forward(x) is the transformers model's .logits: [B, C] for images, [B, T, V] for LMs."""
    model = _load(folders, kind).eval()
    inputs = _batches(kind)[0][0]
    with torch.no_grad():
        logits = model(inputs)
        key = "input_ids" if kind in LANGUAGE_MODELS else "pixel_values"
        own = model.hf(**{key: inputs}).logits
    expected = (3, TOKENS, VOCAB) if kind in LANGUAGE_MODELS else (3, CLASSES)
    assert isinstance(logits, Tensor) and logits.shape == expected
    torch.testing.assert_close(logits, own, rtol=0, atol=0)
    assert model.sfpk_task == ("language_model" if kind in LANGUAGE_MODELS else "classification")


@pytest.mark.parametrize("kind", sorted(_configs()))
def test_loaded_model_is_a_float32_training_mode_wrapper_with_readable_names(folders, kind):
    """The HF model is the submodule ``hf``: names read as in the checkpoint, prefixed hf."""
    model = _load(folders, kind)
    assert isinstance(model, HFModel) and model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    own = [f"hf.{n}" for n, _ in model.hf.named_parameters()]
    assert [n for n, _ in model.named_parameters()] == own


def test_distilled_deit_keeps_both_heads(folders):
    """A distilled DeiT loads with its teacher head; its logits average the two heads."""
    model = _load(folders, "deit_distilled").eval()
    assert type(model.hf).__name__ == "DeiTForImageClassificationWithTeacher"
    with torch.no_grad():
        out = model.hf(pixel_values=_batches("deit_distilled")[0][0])
    torch.testing.assert_close(
        model(_batches("deit_distilled")[0][0]), (out.cls_logits + out.distillation_logits) / 2
    )


@pytest.mark.parametrize("kind", sorted(_configs()))
def test_default_masks_are_the_attention_and_mlp_linears(folders, kind):
    """Every Linear but an LM head is prunable; embeddings, patch conv and norms are not."""
    model = _load(folders, kind)
    names = list(Masks.ones(model))
    assert names == _expected_prunable(model)
    params = dict(model.named_parameters())
    dense = [n for n in params if "embed" in n or "norm" in n or ".wte." in n or ".wpe." in n]
    dense += [n for n in params if ".ln_" in n or "lm_head" in n]
    assert dense and not set(dense) & set(names)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(f"{n}.weight" not in names for n in convs)
    if kind in LANGUAGE_MODELS:
        assert "hf.lm_head.weight" not in names
    else:  # an image classifier keeps its head prunable, as the CNNs do
        assert any("classifier" in n for n in names)


def test_include_overrides_the_default_exclusions(folders):
    """include= replaces the default rule, so a user may still prune an embedding table."""
    model = _load(folders, "gpt2")
    assert list(prunable_parameters(model, include=["*.wpe.weight"])) == [
        "hf.transformer.wpe.weight"
    ]


def test_gpt2_conv1d_becomes_linear_with_the_same_logits(folders):
    """Conv1D -> Linear (transposed weight) changes no output: same logits within 1e-5."""
    torch.manual_seed(0)
    original = transformers.AutoModelForCausalLM.from_pretrained(folders["gpt2"]).eval()
    conv1d = transformers.pytorch_utils.Conv1D
    assert any(isinstance(m, conv1d) for m in original.modules())
    model = _load(folders, "gpt2").eval()
    assert not any(isinstance(m, conv1d) for m in model.modules())
    attn = model.hf.transformer.h[0].attn.c_attn
    assert isinstance(attn, nn.Linear) and tuple(attn.weight.shape) == (3 * 16, 16)  # [out, in]
    ids = _batches("gpt2")[0][0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), original(input_ids=ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", sfpk.methods())
@pytest.mark.parametrize("kind", PRUNED)
def test_every_method_prunes_hf_models_to_exact_global_sparsity(folders, kind, method):
    """Each registered method removes exactly floor(s * P) weights of a ViT, Swin and GPT-2."""
    model = _load(folders, kind)
    data = _batches(kind)
    loss_fn = next_token_loss if kind in LANGUAGE_MODELS else None
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.7, scope="global", seed=1, loss_fn=loss_fn,
        **tiny_options(method),
    )  # fmt: skip
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in _expected_prunable(model))
    assert list(masks) == _expected_prunable(model) and masks.total_weights() == total
    assert total - masks.kept_weights() == math.floor(0.7 * total)
    masks.apply(model)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(data[0][0])).all()


@pytest.mark.parametrize("method", sfpk.methods())
@pytest.mark.parametrize("kind", PRUNED)
def test_every_method_prunes_hf_model_neurons_exactly_per_layer(folders, kind, method):
    """Filter masks remove floor(s * C) output rows of every layer (Conv1D rows included),
    except the classifier's, whose rows are the classes (an LM head is never pruned)."""
    model = _load(folders, kind)
    masks = sfpk.prune(
        model, _batches(kind), method=method, sparsity=0.5, scope="local", structure="filter",
        seed=1, loss_fn=next_token_loss if kind in LANGUAGE_MODELS else None,
        **tiny_options(method),
    )  # fmt: skip
    classes = [] if kind in LANGUAGE_MODELS else ["hf.classifier.weight"]
    assert all(name in _expected_prunable(model) for name in classes)
    assert list(masks) == [n for n in _expected_prunable(model) if n not in classes]
    for name, mask in masks.items():
        rows = masks.shapes[name][0]
        assert int(mask.sum()) == rows - math.floor(0.5 * rows), name


def test_llama_prunes_with_the_default_rule(folders):
    """A Llama-style LM (RMSNorm, gate/up/down MLP) prunes at exact sparsity too."""
    model = _load(folders, "llama")
    masks = sfpk.prune(
        model, _batches("llama"), method="snip", sparsity=0.6, loss_fn=next_token_loss, batches=1
    )
    total = masks.total_weights()
    assert total - masks.kept_weights() == math.floor(0.6 * total)
    assert not any("norm" in n or "embed" in n or "lm_head" in n for n in masks)


def test_task_comes_from_the_config_or_the_task_option(folders):
    """The architecture decides the task; task= is checked against the checkpoint."""
    assert _load(folders, "swin").sfpk_task == "classification"
    assert _load(folders, "llama").sfpk_task == "language_model"
    assert _load(folders, "vit", task="classification").sfpk_task == "classification"
    with pytest.raises(ConfigError, match="cannot load it as a language_model"):
        _load(folders, "vit", task="language_model")
    with pytest.raises(ConfigError, match="task"):
        _load(folders, "vit", task="segmentation")


def test_a_config_of_neither_kind_asks_for_the_task_option(tmp_path):
    """A checkpoint that is no image classifier or causal LM names the task option."""
    transformers.T5Config(architectures=["T5Model"]).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="task=classification or task=language_model"):
        create(f"hf:{tmp_path}", num_classes=CLASSES)


def test_num_classes_resizes_the_classifier_and_says_so(folders, caplog):
    """Another class count gets a new head of that size, and a log line says so."""
    with caplog.at_level(logging.INFO, logger="sfpk.models.hf"):
        model = create(f"hf:{folders['vit']}", num_classes=7)
    assert model.hf.classifier.out_features == 7
    assert model(torch.randn(2, *IMAGE)).shape == (2, 7)
    assert "classifier resized from 3 to 7 classes" in caplog.text


def test_language_model_refuses_more_token_ids_than_its_vocabulary(folders):
    """Data with more token ids than the vocabulary would index past the embedding table."""
    with pytest.raises(ConfigError, match=f"vocabulary of {VOCAB}"):
        create(f"hf:{folders['gpt2']}", num_classes=VOCAB + 1)


def test_unknown_option_lists_the_accepted_ones(folders):
    """A typo in a model option is named, with the options hf: models accept."""
    with pytest.raises(ConfigError, match="tsak.*task, attn_implementation, download"):
        create(f"hf:{folders['vit']}", num_classes=CLASSES, tsak="classification")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("{tmp}/absent", "no such folder"),
        ("{tmp}", "no config.json"),
        ("sfpk-test-owner/no-such-model", "no copy of the Hugging Face model .* in the Hub cache"),
    ],
)
def test_missing_folder_or_id_is_a_one_line_config_error(tmp_path, name, words):
    """A missing folder or an uncached id names itself in one line; nothing is downloaded."""
    name = name.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=words) as info:
        create(f"hf:{name}", num_classes=CLASSES)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_transformers_says_how_to_install(monkeypatch):
    """Without transformers, hf: names fail with the pip command, not an ImportError."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install 'sfpk\[hf\]'"):
        create("hf:facebook/deit-tiny-patch16-224", num_classes=1000)


def test_importing_sfpk_does_not_import_transformers():
    """transformers is optional and slow to import: only an hf: name loads it."""
    import subprocess

    code = "import sys, sfpk, sfpk.models; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("reference_name", "checkpoint"),
    [
        ("deit_tiny", "facebook/deit-tiny-patch16-224"),
        ("deit_base_distilled", "facebook/deit-base-distilled-patch16-224"),
        ("swin_t", "microsoft/swin-tiny-patch4-window7-224"),
        ("swin_s", "microsoft/swin-small-patch4-window7-224"),
        ("vit_b_16", "google/vit-base-patch16-224"),
    ],
)
def test_reference_model_names_map_to_hf_checkpoints(reference_name, checkpoint):
    """The reference's --model deit_*/swin_* runs the same architecture from Hugging Face."""
    assert HF_CHECKPOINTS[reference_name] == checkpoint
    argv = ["--data", "imagenet", "--model", reference_name]
    assert translate(argv).overrides["model.name"] == f"hf:{checkpoint}"


def test_reference_maps_every_deit_and_swin_name():
    """All six DeiTs (plain and distilled) and both Swins of the reference have a checkpoint."""
    deits = [f"deit_{size}{d}" for size in ("tiny", "small", "base") for d in ("", "_distilled")]
    assert set(HF_CHECKPOINTS) == {*deits, "swin_t", "swin_s", "vit_b_16"}


def test_reference_dry_run_shows_the_hf_model(capsys, tmp_path):
    """sfpk reference --dry-run --model deit_small prints the hf: name and loads nothing."""
    from sfpk.cli import main

    argv = ["reference", "--dry-run", "--data", "imagenet", "--model", "deit_small"]
    assert main([*argv, "--model_dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "--model hf:facebook/deit-small-patch16-224" in captured.out
    assert "loads its own pretrained weights" in captured.err  # no <model_dir>/pretrained file
