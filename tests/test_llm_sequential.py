"""Layer-wise pruning of decoder LMs (sfpk.llm.sequential, blocks, capture, methods)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfpk.errors import ConfigError, UnknownNameError
from sfpk.llm import METHODS, find_decoder, prune_layerwise
from sfpk.llm import sequential as sequential_module
from sfpk.models import create

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 32, 16
FAST = {"num_steps": 4, "num_particles": 3}  # particle budget for tests
OPTIONS = {"spode": {"num_steps": 4}, "sfpk": FAST}


def _gpt_tiny() -> nn.Module:
    torch.manual_seed(0)
    return create("gpt_tiny", num_classes=VOCAB, context=SEQ, dim=16, depth=2, num_heads=2)


def _gpt2() -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    from sfpk.models.hf import HFModel, conv1d_to_linear_

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    conv1d_to_linear_(model, Conv1D)
    return HFModel(model, "language_model").eval()


def _llama(cls_name: str = "Llama") -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, f"{cls_name}Config")(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return getattr(transformers, f"{cls_name}ForCausalLM")(config).eval()


def _opt() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=SEQ, word_embed_proj_dim=16,
        bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    return transformers.OPTForCausalLM(config).eval()


BUILDERS = {
    "gpt_tiny": _gpt_tiny,
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": lambda: _llama("Mistral"),
    "opt": _opt,
}


def _calibration(samples: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (samples, SEQ), generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize(
    ("kind", "prefix", "per_block"),
    [("gpt_tiny", "blocks", 6), ("gpt2", "hf.transformer.h", 4), ("llama", "model.layers", 7),
     ("mistral", "model.layers", 7), ("opt", "model.decoder.layers", 6)],
)  # fmt: skip
def test_find_decoder_lists_blocks_and_their_linears(kind, prefix, per_block):
    """Every supported layout must yield its block list and all linears inside each block."""
    decoder = find_decoder(BUILDERS[kind]())
    assert decoder.prefix == prefix and len(decoder) == 2
    names = list(decoder.linears(1))
    assert len(names) == per_block and all(n.startswith(f"{prefix}.1.") for n in names)


def test_model_without_blocks_names_its_class_and_the_supported_ones():
    """A model without a decoder block list must fail early with a clear message."""
    with pytest.raises(ConfigError, match=r"Sequential.*supports GPT2LMHeadModel.*gpt_tiny"):
        find_decoder(nn.Sequential(nn.Linear(4, 4)))
    vit = create("vit_tiny", num_classes=3, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="ViTTiny"):
        find_decoder(vit)


@pytest.mark.parametrize("method", METHODS)
def test_every_row_loses_exactly_half(method):
    """Per output row (Wanda's comparison group) exactly floor(0.5 * d_in) weights go."""
    model = _gpt_tiny()
    result = prune_layerwise(
        model, _calibration(), method=method, sparsity=0.5, options=OPTIONS.get(method)
    )
    params = dict(model.named_parameters())
    assert len(result.masks) == 12 and result.masks.scope == "row"
    for name, mask in result.masks.items():
        assert ((mask == 0).sum(1) == mask.shape[1] // 2).all(), name
        assert (params[name][mask == 0] == 0).all(), name
    assert result.masks.sparsity() == 0.5 and len(result.block_seconds) == 2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("structure", ["2:4", "4:8"])
def test_every_nm_group_keeps_exactly_n(method, structure):
    """Under N:M every group of M consecutive input weights keeps exactly N."""
    n, m = map(int, structure.split(":"))
    model = _llama()
    result = prune_layerwise(
        model, _calibration(), method=method, sparsity=1 - n / m, structure=structure,
        options=OPTIONS.get(method),
    )  # fmt: skip
    assert result.masks.structure == structure
    for name, mask in result.masks.items():
        assert (mask.reshape(mask.shape[0], -1, m).sum(2) == n).all(), name


@pytest.mark.parametrize("kind", ["gpt_tiny", "gpt2", "opt"])
def test_embeddings_norms_and_lm_head_stay_untouched(kind):
    """Only block linears change: embeddings, norms and the LM head are left dense as they were."""
    model = BUILDERS[kind]()
    before = {n: p.clone() for n, p in model.named_parameters()}
    result = prune_layerwise(model, _calibration(), method="sparsegpt", sparsity=0.5)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(result.masks)


@pytest.mark.parametrize("kind", ["gpt_tiny", "gpt2", "llama"])
def test_recorded_block_inputs_equal_the_pruned_models_hidden_states(kind, monkeypatch):
    """Block k is pruned on exactly the hidden states the pruned model computes at block k."""
    model = BUILDERS[kind]()
    seen: dict[int, torch.Tensor] = {}
    real = sequential_module._prune_block

    def spy(decoder, index, inputs, spec):
        seen[index] = torch.cat([batch.hidden for batch in inputs])
        return real(decoder, index, inputs, spec)

    monkeypatch.setattr(sequential_module, "_prune_block", spy)
    calib = _calibration()
    prune_layerwise(model, calib, method="wanda", sparsity=0.5, batch_size=3)
    actual: dict[int, torch.Tensor] = {}
    decoder = find_decoder(model)
    hooks = [
        block.register_forward_pre_hook(
            lambda _m, args, kwargs, i=i: actual.__setitem__(
                i, args[0] if args else kwargs["hidden_states"]
            ),
            with_kwargs=True,
        )
        for i, block in enumerate(decoder.blocks)
    ]
    _logits(model, calib)
    for hook in hooks:
        hook.remove()
    assert sorted(seen) == [0, 1]
    for index in seen:
        torch.testing.assert_close(seen[index], actual[index], rtol=1e-5, atol=1e-5)


def _distortion(dense: nn.Module, pruned: nn.Module, ids: torch.Tensor) -> float:
    """KL(dense || pruned) of the next-token distributions on ``ids``."""
    target = F.log_softmax(_logits(dense, ids), -1)
    return float(F.kl_div(F.log_softmax(_logits(pruned, ids), -1), target, log_target=True,
                          reduction="batchmean"))  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_every_method_distorts_less_than_random_masks(method):
    """Each method must keep the calibration outputs closer to the dense model than random
    per-row masks of the same sparsity do."""
    dense = _llama()
    with torch.no_grad():  # sharper outputs than the 0.02 init, so masks matter
        for p in dense.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    calib = _calibration(16)
    pruned = copy.deepcopy(dense)
    prune_layerwise(pruned, calib, method=method, sparsity=0.5, options=OPTIONS.get(method))
    rand = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(0)
    decoder = find_decoder(rand)
    with torch.no_grad():
        for index in range(len(decoder)):
            for layer in decoder.linears(index).values():
                order = torch.rand(layer.weight.shape, generator=gen).argsort(1)
                keep = torch.ones_like(layer.weight).scatter_(1, order[:, : order.shape[1] // 2], 0)
                layer.weight.mul_(keep)
    assert _distortion(dense, pruned, calib) < 0.8 * _distortion(dense, rand, calib)


@pytest.mark.parametrize("method", ["spode", "sfpk"])
def test_particle_methods_are_reproducible_by_seed(method):
    """The same seed must give the same masks and weights; another seed other masks."""
    runs = []
    for seed in (0, 0, 1):
        model = _gpt_tiny()
        result = prune_layerwise(
            model, _calibration(), method=method, sparsity=0.5, seed=seed,
            options={**OPTIONS[method], "update_weights": False, "selection": "vote"},
        )  # fmt: skip
        runs.append(result.masks)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "obs"}, UnknownNameError, r"unknown method 'obs'.*sparsegpt"),
        ({"sparsity": 1.5}, ConfigError, r"sparsity=1.5"),
        ({"structure": "channel"}, ConfigError, r"structure='channel'.*'2:4'"),
        ({"structure": "2:5"}, ConfigError, r"2:5.*multiple of 5.*in_features=16"),
        ({"options": {"num_step": 3}}, ConfigError, r"num_step.*num_steps"),
        ({"method": "wanda", "options": {"damping": 0.1}}, ConfigError, r"'wanda' takes no"),
        ({"method": "spode", "options": {"num_particles": 4}}, ConfigError, r"num_particles"),
        ({"options": {"update_weights": False}}, ConfigError, r"update_weights=False.*'vote'"),
    ],
)
def test_bad_arguments_fail_early_and_leave_the_model_as_it_was(kwargs, error, match):
    """Bad input is an SfpkError naming the value and the choices, before any change."""
    model = _gpt_tiny()
    before = {n: p.clone() for n, p in model.named_parameters()}
    args = {"method": "sfpk", "sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        prune_layerwise(model, _calibration(), **args)
    assert _unchanged(model, before)


def test_calibration_longer_than_the_positions_is_refused():
    """Calibration windows beyond the model's positions must be refused up front."""
    model = _llama()
    long = torch.zeros(2, SEQ + 1, dtype=torch.long)
    with pytest.raises(ConfigError, match=rf"seqlen={SEQ + 1}.*{SEQ} positions"):
        prune_layerwise(model, long, method="mag", sparsity=0.5)
