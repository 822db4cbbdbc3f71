"""Attention-head and MLP-neuron groups (sfpk.masks.groups).

A head spans rows of q, k, v and columns of the output projection; a neuron a row of the
first MLP projection and a column of the second. Every method must remove whole groups at
exact counts, and a masked model must compute what the same model with those heads and
neurons silenced by hand computes.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch import Tensor, nn

import sfpk
from helpers import tiny_options
from sfpk.errors import ConfigError, MaskMismatchError, SparsityCheckError
from sfpk.losses import next_token_loss
from sfpk.masks.core import Masks
from sfpk.masks.groups import Block, Coupling, Member
from sfpk.models import create
from sfpk.pruners.particles.layout import FlatLayout
from sfpk.selection.topk import check_achieved_sparsity

VOCAB, TOKENS, CLASSES = 30, 8, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _gpt() -> nn.Module:
    torch.manual_seed(0)
    return create("gpt_tiny", num_classes=VOCAB, dim=16, depth=2, num_heads=4, context=TOKENS)


def _lm_batches(seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 4, TOKENS + 1), generator=gen)
    return [(ids[i, :, :-1], ids[i, :, 1:]) for i in range(2)]


def _hf(kind: str) -> nn.Module:
    """A tiny random transformers model of ``kind``, wrapped as sfpk wraps hf: models."""
    from sfpk.models.hf import HFModel, conv1d_to_linear_

    torch.manual_seed(0)
    tokens = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_positions=16, n_embd=16, n_layer=2, n_head=4, **tokens)
        model = transformers.GPT2LMHeadModel(config)
        conv1d_to_linear_(model, transformers.pytorch_utils.Conv1D)
        return HFModel(model, "language_model")
    if kind == "llama":  # grouped-query attention: 4 query heads read 2 key/value heads
        config = transformers.LlamaConfig(
            hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16, **tokens,
        )  # fmt: skip
        return HFModel(transformers.LlamaForCausalLM(config), "language_model")
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=24, num_labels=CLASSES,
        )  # fmt: skip
        return HFModel(transformers.ViTForImageClassification(config), "classification")
    config = transformers.SwinConfig(
        image_size=8, patch_size=2, num_channels=1, embed_dim=8, depths=[1, 1],
        num_heads=[2, 4], window_size=2, mlp_ratio=2.0, num_labels=CLASSES,
    )  # fmt: skip
    return HFModel(transformers.SwinForImageClassification(config), "classification")


def _image_batches() -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(3, 1, 8, 8, generator=gen), torch.randint(0, CLASSES, (3,), generator=gen))
        for _ in range(2)
    ]


# -- finding the groups ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "heads", "neurons"),
    [("gpt2", [4, 4], [64, 64]), ("llama", [2], [24]), ("vit", [4, 4], [24, 24]),
     ("swin", [2, 4], [16, 32])],
)  # fmt: skip
def test_finder_sees_every_head_and_neuron_of_hf_families(kind, heads, neurons):
    """GPT-2 (fused c_attn), Llama (GQA: one group per key/value head), ViT and Swin."""
    model = _hf(kind)
    masks = Masks.ones(model, structure="head+neuron")
    assert masks.coupling is not None
    by_kind = {
        k: [b.groups for b in masks.coupling.blocks if b.kind == k] for k in ("head", "neuron")
    }
    assert by_kind == {"head": heads, "neuron": neurons}
    # Every attention/MLP Linear is covered; nothing else (embeddings, norms, heads) is.
    assert not any("embed" in n or "norm" in n or "lm_head" in n for n in masks)


def test_gpt2_fused_qkv_head_owns_matching_rows_of_q_k_and_v():
    model = _hf("gpt2")
    masks = Masks.ones(model, structure="head")
    owners = masks.coupling.entry_groups(masks.shapes)
    rows = owners["hf.transformer.h.0.attn.c_attn.weight"]  # [q; k; v], 16 rows each
    head_of = torch.arange(16) // 4
    assert torch.equal(rows, torch.cat([head_of, head_of, head_of]))
    assert torch.equal(owners["hf.transformer.h.0.attn.c_proj.weight"], head_of)


def test_model_without_heads_or_neurons_is_a_clear_error():
    model = create("cnn1d", num_classes=10)
    with pytest.raises(ConfigError, match="found no head groups.*q/k/v/o"):
        Masks.ones(model, structure="head")


def test_excluding_one_member_drops_its_whole_block():
    """A neuron can't be half pruned: excluding fc2 of block 0 leaves block 0's MLP dense."""
    model = _gpt()
    masks = Masks.ones(model, structure="neuron", exclude=["blocks.0.mlp.fc2.weight"])
    assert [b.name for b in masks.coupling.blocks] == ["blocks.1.mlp"]
    assert list(masks) == ["blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"]


def test_coupling_must_tile_each_tensor_exactly_once():
    shapes = {"a.weight": (8, 4), "b.weight": (4, 8)}
    good = Coupling((Block("m", "neuron", 8, (Member("a.weight", 0, 0, 1),
                                              Member("b.weight", 1, 0, 1))),))  # fmt: skip
    good.check(shapes)
    short = Coupling((Block("m", "neuron", 4, good.blocks[0].members),))
    with pytest.raises(MaskMismatchError, match="exactly once"):
        short.check(shapes)
    with pytest.raises(MaskMismatchError, match="reaches entry"):
        Coupling((Block("m", "neuron", 9, good.blocks[0].members),)).check(shapes)


# -- exact counts for every method -----------------------------------------------------------
def _group_state(masks: Masks) -> Tensor:
    """Per group: 1 kept, 0 removed (asserting every entry of a group agrees)."""
    index = torch.cat([o for o in masks.coupling.entry_groups(masks.shapes).values()])
    values = torch.cat([(masks[n] != 0).reshape(-1).float() for n in masks])
    kept = torch.zeros(masks.coupling.num_groups).index_add_(0, index, values)
    count = torch.zeros_like(kept).index_add_(0, index, torch.ones_like(values))
    assert bool(((kept == 0) | (kept == count)).all()), "a group is partly removed"
    return (kept > 0).float()


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_removes_whole_heads_and_neurons_per_block(method):
    """local scope: floor(s * G) groups of every attention module and MLP go, whole."""
    model = _gpt()
    masks = sfpk.prune(
        model, _lm_batches(), method=method, sparsity=0.5, structure="head+neuron",
        scope="local", loss_fn=next_token_loss, seed=0, **tiny_options(method),
    )  # fmt: skip
    alive = _group_state(masks)
    blocks = masks.coupling.blocks
    for block, keep in zip(blocks, alive.split(masks.coupling.block_sizes()), strict=True):
        assert int(keep.sum()) == block.groups - math.floor(0.5 * block.groups), block.name


@pytest.mark.parametrize("kind", ["gpt2", "llama", "vit", "swin"])
@pytest.mark.parametrize("method", ["mag", "snip", "sfpk"])
def test_methods_prune_hf_heads_and_neurons_to_the_global_budget(kind, method):
    """global scope: the removed weights stay within floor(s * P) and within one group of it."""
    model = _hf(kind)
    lm = kind in ("gpt2", "llama")
    masks = sfpk.prune(
        model, _lm_batches() if lm else _image_batches(), method=method, sparsity=0.6,
        structure="head+neuron", loss_fn=next_token_loss if lm else None, seed=0,
        **tiny_options(method),
    )  # fmt: skip
    alive = _group_state(masks)
    weights = masks.coupling.group_weights(masks.shapes)
    removed = int((weights * (1 - alive)).sum())
    budget = math.floor(0.6 * masks.total_weights())
    assert budget - int(weights.max()) < removed <= budget
    assert removed == masks.total_weights() - masks.kept_weights()
    for keep in alive.split(masks.coupling.block_sizes()):  # no block is emptied
        assert keep.sum() >= 1


def test_sparsity_check_rejects_a_half_removed_group():
    model = _gpt()
    masks = Masks.ones(model, structure="head")
    broken = dict(masks)
    broken["blocks.0.attn.q.weight"] = broken["blocks.0.attn.q.weight"].clone()
    broken["blocks.0.attn.q.weight"][:4] = 0  # head 0's q rows only
    with pytest.raises(SparsityCheckError, match="partly removed"):
        check_achieved_sparsity(masks.with_tensors(broken), 0.25, "local")


# -- the masked model is the model with those heads / neurons silenced ----------------------
def _silenced_by_hand(model: nn.Module, heads: dict[str, list[int]], neurons: dict[str, list[int]]):
    """Zero, in a copy of gpt_tiny, the given heads' q/k/v rows and biases and o columns, and
    the given neurons' fc1 rows and biases and fc2 columns; written from the model's own
    layout, not from the coupling table."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for prefix, removed in heads.items():
            attn = out.get_submodule(prefix)
            for h in removed:
                rows = slice(h * attn.head_dim, (h + 1) * attn.head_dim)
                for proj in (attn.q, attn.k, attn.v):
                    proj.weight[rows] = 0
                    proj.bias[rows] = 0
                attn.o.weight[:, rows] = 0
        for prefix, removed in neurons.items():
            mlp = out.get_submodule(prefix)
            mlp.fc1.weight[removed] = 0
            mlp.fc1.bias[removed] = 0
            mlp.fc2.weight[:, removed] = 0
    return out


def test_masked_model_equals_the_hand_silenced_model():
    model = _gpt()
    masks = sfpk.prune(
        model, _lm_batches(), method="snip", sparsity=0.5, structure="head+neuron",
        scope="local", loss_fn=next_token_loss, seed=0, batches=1,
    )  # fmt: skip
    heads, neurons = {}, {}
    for block in masks.coupling.blocks:
        if block.kind == "head":
            rows = masks[f"{block.name}.q.weight"].reshape(-1)
            heads[block.name] = [h for h in range(4) if rows[h * 4] == 0]
        else:
            rows = masks[f"{block.name}.fc1.weight"].reshape(-1)
            neurons[block.name] = torch.nonzero(rows == 0).reshape(-1).tolist()
    assert all(len(v) == 2 for v in heads.values())
    expected = _silenced_by_hand(model, heads, neurons)
    pruned = masks.apply(_gpt())
    ids = _lm_batches(seed=5)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids), expected(ids), rtol=0, atol=0)
        # and a removed neuron's activation is exactly zero (its bias went with it)
        hidden = {}
        pruned.blocks[0].mlp.fc2.register_forward_hook(lambda m, i, o: hidden.update(x=i[0]))
        pruned(ids)
    assert bool((hidden["x"][..., neurons["blocks.0.mlp"]] == 0).all())


# -- the particle engine moves one coordinate per group --------------------------------------
def test_layout_gradient_is_the_gradient_of_a_per_group_gate():
    """mask_gradient_ sums the entries' gradients into their group, tied biases included:
    it equals autograd's gradient w.r.t. one scalar gate per group."""

    model = _gpt()
    masks = Masks.ones(model, structure="head+neuron")
    layout = FlatLayout(model, masks)
    assert layout.num_entries == masks.coupling.num_groups == layout.entry_weight.numel()
    gate = torch.rand(layout.num_entries, dtype=torch.float32, requires_grad=True)
    weights = layout.effective_weights(gate)
    params = {n: p.detach() for n, p in model.named_parameters()}
    params.update(weights)
    ids, targets = _lm_batches()[0]
    loss = next_token_loss(torch.func.functional_call(model, params, (ids,)), targets)
    (expected,) = torch.autograd.grad(loss, gate)
    eff = {
        n: w.detach().requires_grad_(True)
        for n, w in layout.effective_weights(gate.detach()).items()
    }
    params.update(eff)
    loss = next_token_loss(torch.func.functional_call(model, params, (ids,)), targets)
    grads = dict(zip(eff, torch.autograd.grad(loss, list(eff.values())), strict=True))
    got = layout.mask_gradient_(grads, torch.empty(layout.num_entries))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_entry_scores_sum_back_to_each_group_exactly():
    model = _gpt()
    masks = Masks.ones(model, structure="head+neuron")
    layout = FlatLayout(model, masks)
    row = torch.randn(layout.num_entries)
    scores = layout.entry_scores(row)
    index = torch.cat([masks.coupling.entry_groups(masks.shapes)[n] for n in masks])
    flat = torch.cat([scores[n].reshape(-1) for n in masks]).double()
    summed = torch.zeros(layout.num_entries, dtype=torch.float64).index_add_(0, index, flat)
    assert torch.equal(summed, row.double())
    assert torch.equal(layout.flatten(layout.views(row)), row)


def test_iterative_sfpk_rounds_keep_removed_heads_removed():
    model = _gpt()
    data = _lm_batches()
    first = sfpk.run_pruner(
        model, data, method="sfpk", sparsity=0.3, structure="head", scope="local",
        loss_fn=next_token_loss, seed=0, **tiny_options("sfpk"),
    )  # fmt: skip
    second = sfpk.run_pruner(
        model, data, method="sfpk", sparsity=0.6, masks=first.masks, scope="local",
        loss_fn=next_token_loss, seed=0, start=sfpk.StartState(first.state),
        **tiny_options("sfpk"),
    )  # fmt: skip
    before, after = _group_state(first.masks), _group_state(second.masks)
    assert bool((after <= before).all()) and int(after.sum()) < int(before.sum())


# -- files ------------------------------------------------------------------------------------
def test_coupled_masks_round_trip_through_a_file(tmp_path):
    model = _gpt()
    masks = sfpk.prune(
        model, _lm_batches(), method="mag", sparsity=0.5, structure="head+neuron",
        scope="local", loss_fn=next_token_loss,
    )  # fmt: skip
    path = masks.save(tmp_path / "m.safetensors")
    back = Masks.load(path, model)
    assert back.coupling == masks.coupling and back.structure == "head+neuron"
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert back.tied_biases == masks.tied_biases
    assert "blocks.0.attn.q.bias" in back.tied_biases
    assert "blocks.0.attn.o.bias" not in back.tied_biases


# -- through the pipeline ---------------------------------------------------------------------
def test_iterative_sfpk_pipeline_prunes_gpt_tiny_heads_and_neurons(tmp_path):
    """`sfpk iterative --model gpt_tiny --structure head+neuron`: 2 rounds of SFPK on the
    generated corpus; the saved masks carry their coupling and remove whole groups."""
    from sfpk.config.core import build_config
    from sfpk.pipelines import start

    overrides = {
        "data.dataset": "tinytext", "data.options": {"block_size": 8, "num_chars": 4000},
        "model.name": "gpt_tiny", "model.options": {"dim": 16, "num_heads": 4},
        "pretrain.epochs": 1, "pretrain.optimizer": "adam", "pretrain.lr": 0.01,
        "pretrain.batch_size": 64, "pretrain.nesterov": False,
        "train.epochs": 2, "train.warmup_epochs": 0, "train.optimizer": "adam",
        "train.lr": 0.003, "train.batch_size": 64, "train.report_last_k": 1,
        "train.round_epochs": [1], "train.round_lr": [0.003], "train.round_lr_end": [0.0003],
        "prune.method": "sfpk", "prune.sparsity": 0.5, "prune.structure": "head+neuron",
        "prune.scope": "local", "prune.rounds": 2, "prune.batch_size": 16,
        "prune.num_samples": 32, "prune.options": {"num_steps": 2, "num_particles": 2},
        "run.quiet": True, "run.device": "cpu", "run.plots": False, "run.out": str(tmp_path / "r"),
    }  # fmt: skip
    summary = start(build_config("iterative", overrides=overrides))
    assert math.isfinite(summary["final_test_ppl"])
    masks = Masks.load(tmp_path / "r" / "masks.safetensors")
    assert masks.structure == "head+neuron" and masks.coupling is not None
    alive = _group_state(masks)
    sizes = masks.coupling.block_sizes()
    for block, keep in zip(masks.coupling.blocks, alive.split(sizes), strict=True):
        assert int(keep.sum()) == block.groups - math.floor(0.5 * block.groups), block.name
