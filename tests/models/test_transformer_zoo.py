"""The native zoo transformers ``gpt_tiny`` and ``vit_tiny``: shapes, masks, every method.

They are the offline stand-ins for Hugging Face ViTs and GPTs: plain ``nn.Linear`` q/k/v/o
and MLP layers, so each pruning method must reach its exact sparsity on them, with the
embeddings, norms and LM head left dense by default.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sfpk
from helpers import tiny_options
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks
from sfpk.masks.prunable import prunable_parameters
from sfpk.models import create

VOCAB, TOKENS, CLASSES = 11, 6, 10
# key -> (registry name, input shape without batch dim)
ZOO: dict[str, tuple[str, tuple[int, ...]]] = {
    "gpt_tiny": ("gpt_tiny", (TOKENS,)),
    "vit_tiny_digits": ("vit_tiny", (1, 8, 8)),
    "vit_tiny_mnist1d": ("vit_tiny", (40,)),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over every position: ``[B, T, V]`` logits, ``[B, T]`` targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _build(key: str, seed: int = 0):
    """A seeded zoo transformer, two random batches and the loss to prune it with."""
    name, shape = ZOO[key]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "gpt_tiny":
        model = create(name, num_classes=VOCAB, input_shape=shape)
        data = [
            (
                torch.randint(0, VOCAB, (3, TOKENS), generator=gen),
                torch.randint(0, VOCAB, (3, TOKENS), generator=gen),
            )
            for _ in range(2)
        ]
        return model, data, next_token_loss
    model = create(name, num_classes=CLASSES, input_shape=shape)
    data = [
        (torch.randn(3, *shape, generator=gen), torch.randint(0, CLASSES, (3,), generator=gen))
        for _ in range(2)
    ]
    return model, data, None


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _expected_prunable(key: str, model: nn.Module) -> list[str]:
    """Every Linear weight of the blocks, and a ViT's classifier (an LM head stays dense)."""
    blocks = [n for n in _linears(model) if n.startswith("blocks.")]
    return blocks if key == "gpt_tiny" else [*blocks, "head.weight"]


def test_gpt_tiny_maps_token_ids_to_next_token_logits():
    """forward(input_ids [B, T]) -> logits [B, T, V]: what an LM loss and perplexity expect."""
    model, data, _ = _build("gpt_tiny")
    logits = model(data[0][0])
    assert logits.shape == (3, TOKENS, VOCAB) and torch.isfinite(logits).all()
    assert model.sfpk_task == "language_model"


def test_gpt_tiny_is_causal():
    """A token never sees the future: changing the last token leaves earlier logits alone."""
    model, data, _ = _build("gpt_tiny")
    ids = data[0][0]
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    model.eval()
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1], rtol=0, atol=0)
    assert not torch.equal(before[:, -1], after[:, -1])


def test_gpt_tiny_options_set_vocabulary_and_context():
    """vocab_size and context are model options; num_classes is the vocabulary by default."""
    model = create("gpt_tiny", num_classes=7, vocab_size=20, context=8, dim=16, num_heads=2)
    assert model.head.out_features == 20 and model.pos_embed.num_embeddings == 8
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[0].attn.head_dim == 8


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"num_classes": 30, "vocab_size": 20}, "30 token ids"),
        ({"num_classes": 5, "input_shape": (80,), "context": 64}, "T <= context=64"),
        ({"num_classes": 5, "dim": 30, "num_heads": 4}, "divide dim=30"),
    ],
)
def test_gpt_tiny_bad_sizes_name_the_value(options, words):
    """A vocabulary too small for the data, a too long context or odd heads: ConfigError."""
    with pytest.raises(ConfigError, match=words):
        create("gpt_tiny", **options)


def test_gpt_tiny_refuses_sequences_longer_than_its_context():
    """Past the position table a lookup would fail cryptically; the error names the option."""
    model = create("gpt_tiny", num_classes=5, context=4)
    with pytest.raises(ConfigError, match="context=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize(
    ("shape", "patch", "patches"),
    [((1, 8, 8), 4, 4), ((40,), 8, 5), ((3, 32, 32), 8, 16), ((3, 224, 224), 16, 196)],
)
def test_vit_tiny_patches_follow_the_input_shape(shape, patch, patches):
    """Patching comes from input_shape: 4x4 on digits, 8-long on MNIST-1D, ViT-B/16 on 224."""
    model = create("vit_tiny", num_classes=CLASSES, input_shape=shape)
    assert model.patch_size == patch and model.pos_embed.shape[1] == patches + 1
    conv = nn.Conv2d if len(shape) == 3 else nn.Conv1d
    assert type(model.patch_embed) is conv


def test_vit_tiny_patch_size_option_and_bad_values():
    """patch_size overrides the choice; one that does not divide the input is refused."""
    model = create("vit_tiny", num_classes=CLASSES, input_shape=(40,), patch_size=4)
    assert model.pos_embed.shape[1] == 10 + 1
    assert model(torch.randn(2, 40)).shape == (2, CLASSES)
    with pytest.raises(ConfigError, match="patch_size=3"):
        create("vit_tiny", num_classes=CLASSES, input_shape=(40,), patch_size=3)
    with pytest.raises(ConfigError, match="input_shape"):
        create("vit_tiny", num_classes=CLASSES, input_shape=(1, 2, 8, 8))


@pytest.mark.parametrize("key", sorted(ZOO))
def test_default_masks_are_every_attention_and_mlp_linear(key):
    """q/k/v/o and fc1/fc2 of every block are prunable; embeddings, norms, LM head are not."""
    model, _, _ = _build(key)
    names = list(Masks.ones(model))
    assert names == _expected_prunable(key, model)
    assert sum(n.startswith("blocks.") for n in names) == 6 * len(model.blocks)
    for name in ("tok_embed.weight", "pos_embed.weight", "patch_embed.weight", "norm.weight"):
        assert name not in names
    assert "head.weight" in prunable_parameters(model, include=["head.weight"])  # include wins


@pytest.mark.parametrize("method", sfpk.methods())
@pytest.mark.parametrize("key", sorted(ZOO))
def test_every_method_prunes_zoo_transformers_to_exact_global_sparsity(key, method):
    """Each method lands on floor(s * P) removed weights, and the pruned model still runs."""
    model, data, loss_fn = _build(key)
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.7, scope="global", seed=1, loss_fn=loss_fn,
        **tiny_options(method),
    )  # fmt: skip
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in _expected_prunable(key, model))
    assert list(masks) == _expected_prunable(key, model) and masks.total_weights() == total
    assert total - masks.kept_weights() == math.floor(0.7 * total)
    masks.apply(model)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(data[0][0])).all()


@pytest.mark.parametrize("method", sfpk.methods())
@pytest.mark.parametrize("key", sorted(ZOO))
def test_every_method_prunes_zoo_transformer_neurons_exactly_per_layer(key, method):
    """Filter masks (output neurons, heads' rows) remove floor(s * C) rows of every layer."""
    model, data, loss_fn = _build(key)
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.5, scope="local", structure="filter", seed=1,
        loss_fn=loss_fn, **tiny_options(method),
    )  # fmt: skip
    for name, mask in masks.items():
        rows = masks.shapes[name][0]
        assert mask.shape == (rows, 1)
        assert int(mask.sum()) == rows - math.floor(0.5 * rows), name


@pytest.mark.slow
def test_vit_tiny_trains_on_digits_above_chance():
    """vit_tiny learns: 4 Adam epochs on digits reach far above the 10 % of chance."""
    from sfpk.data import load_dataset, make_loader
    from sfpk.training.optimizers import OptimizerConfig
    from sfpk.training.trainer import Trainer

    splits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = create("vit_tiny", num_classes=splits.num_classes, input_shape=splits.input_shape)
    options = OptimizerConfig(optimizer="adam", lr=3e-3, weight_decay=0.0)
    trainer = Trainer(model, options, device=torch.device("cpu"), progress=False)
    train = make_loader(splits.train, batch_size=32, shuffle=True, seed=0)
    for _ in range(4):
        trainer.train_epoch(train, lr=3e-3)
    test = make_loader(splits.test, batch_size=256, shuffle=False, seed=0)
    assert trainer.evaluate(test).top1 > 0.6


def test_sfpk_models_lists_the_zoo_transformers(capsys):
    """`sfpk models` shows gpt_tiny and vit_tiny."""
    from sfpk.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out.split()
    assert "gpt_tiny" in listed and "vit_tiny" in listed
