"""Data that does not fit the model, and the default loss on a language model (issue #24).

``sfpk.prune`` runs the model and the loss once on the first batch before any work; a
failure is one ``DataMismatchError`` naming the argument to change, never a raw PyTorch
error from inside the first step, and the caller's model is left as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import transformers
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import sfpk
from helpers import assert_same_state, snapshot, tiny_options
from sfpk.errors import DataMismatchError, SfpkError
from sfpk.losses import check_loss_targets, next_token_loss
from sfpk.models import create

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread

VOCAB, TOKENS = 40, 8
DATA_METHODS = [m for m in sfpk.methods() if sfpk.pruner_class(m).needs_data]
LOSS_METHODS = [m for m in DATA_METHODS if sfpk.pruner_class(m).uses_loss]
DATA_FREE = [m for m in sfpk.methods() if not sfpk.pruner_class(m).needs_data]


def _model() -> nn.Module:
    """8 -> 16 -> 3, with BatchNorm, one submodule in eval mode and a frozen bias, so a
    changed mode, buffer or flag shows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[1].eval()
    model[3].bias.requires_grad_(False)
    return model


def _batches(features: int = 8, targets: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (16,), generator=gen) if targets is None else targets
    return [(torch.randn(16, features, generator=gen), y)]


def _prune(model: nn.Module, data, method: str = "snip", **kwargs) -> sfpk.Masks:
    options = {**tiny_options(method), **kwargs}
    return sfpk.prune(model, data, method=method, sparsity=0.5, **options)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2, written with save_pretrained (nothing downloaded)."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0, architectures=["GPT2LMHeadModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _tokens(seed: int = 2) -> Tensor:
    return torch.randint(0, VOCAB, (4, TOKENS + 1), generator=torch.Generator().manual_seed(seed))


# -- 1. batches that do not fit the model ---------------------------------------------------


def test_inputs_that_do_not_fit_name_data_the_shapes_and_keep_the_cause():
    """A [16, 5] batch for an 8-feature model says which batch, its shapes and `data`."""
    with pytest.raises(DataMismatchError) as info:
        _prune(_model(), _batches(features=5))
    message = str(info.value)
    assert message.startswith("the model's forward failed on the first batch of the pruning data")
    assert "inputs float32 [16, 5], targets int64 [16]" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message
    assert "pass `data` whose inputs the model takes" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "\n" not in message


@pytest.mark.parametrize("method", DATA_METHODS)
def test_every_data_method_refuses_unfitting_inputs_and_leaves_the_model(method):
    """Each method that reads the data stops on the check, before any work, model intact."""
    model = _model()
    before = snapshot(model)
    with pytest.raises(DataMismatchError, match=r"forward failed on the first batch"):
        _prune(model, _batches(features=5), method=method)
    assert_same_state(model, before)


@pytest.mark.parametrize("method", DATA_FREE)
def test_data_free_methods_run_no_forward_on_the_data(method):
    """rand/mag/synflow never run the model on the batches: no check, no extra forward."""
    model = _model()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    masks = _prune(model, _batches(), method=method)
    assert masks.sparsity() == pytest.approx(0.5, abs=0.02)
    assert all(shape[0] == 1 for shape in calls)  # synflow's all-ones input only


def test_synflow_names_data_when_the_input_shape_does_not_fit():
    """SynFlow's own forward (all ones, the data's input shape) names `data` and the shape."""
    with pytest.raises(sfpk.ConfigError, match=r"shaped like one input of the data, \[1, 5\]"):
        _prune(_model(), _batches(features=5), method="synflow")


def test_the_check_costs_one_forward_on_one_batch():
    """snip reading one batch runs the model twice in all: the check adds one forward."""
    model = _model()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    _prune(model, _batches() * 3, method="snip", batches=1)
    assert calls == [torch.Size([16, 8])] * 2


# -- 2. labels outside the model's outputs -------------------------------------------------


def test_targets_outside_the_classes_name_their_range_and_c():
    """Targets of 7 for 3 outputs: the values' range, C and what to pass instead."""
    with pytest.raises(DataMismatchError) as info:
        _prune(_model(), _batches(targets=torch.full((16,), 7)))
    message = str(info.value)
    assert "the targets of the first batch of the pruning data" in message
    assert "hold values in [7, 7], 16 of 16 outside [0, 3)" in message
    assert "C=3 classes" in message
    assert "the model's output float32 [16, 3]" in message
    assert "pass `data` whose targets are in [0, 3)" in message


@pytest.mark.parametrize("method", LOSS_METHODS)
def test_every_loss_method_refuses_out_of_range_targets_and_leaves_the_model(method):
    """Each method that takes a loss refuses negative targets before the loss runs."""
    model = _model()
    before = snapshot(model)
    targets = torch.arange(16) % 3 - 1  # -1, 0, 1: the -1s are outside [0, 3)
    with pytest.raises(DataMismatchError, match=r"values in \[-1, 1\], 6 of 16 outside"):
        _prune(model, _batches(targets=targets), method=method)
    assert_same_state(model, before)


def test_wanda_ignores_the_targets():
    """wanda runs forward passes only: targets it never reads are not refused."""
    masks = _prune(_model(), _batches(targets=torch.full((16,), 7)), method="wanda")
    assert masks.sparsity() == pytest.approx(0.5)


def test_a_dataloader_batch_is_checked_too():
    """A map-style DataLoader's first batch (its first items, collated) is checked."""
    x, y = torch.randn(32, 8), torch.full((32,), 5)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with pytest.raises(DataMismatchError, match=r"targets int64 \[8\].*values in \[5, 5\]"):
        _prune(_model(), loader)


def test_ignore_index_targets_pass():
    """-100 is cross-entropy's ignored target, not an out-of-range class."""
    targets = torch.randint(0, 3, (16,))
    targets[:4] = -100
    masks = _prune(_model(), _batches(targets=targets))
    assert masks.sparsity() == pytest.approx(0.5)


# -- 3. a language model with the default loss ---------------------------------------------


def test_language_model_with_the_default_loss_is_refused_naming_next_token_loss(gpt2):
    """[B, T, V] logits for [B, T] targets: sfpk.prune names the loss to pass, and how to
    shift targets that equal the inputs, and the model is left as it was."""
    model = create(f"hf:{gpt2}", num_classes=VOCAB)
    before = snapshot(model)
    tokens = _tokens()[:, :TOKENS]
    with pytest.raises(DataMismatchError) as info:
        _prune(model, [(tokens, tokens)], method="sfpk")
    message = str(info.value)
    assert "the model's output float32 [4, 8, 40]" in message
    assert "looks like a language model's" in message
    assert "pass loss_fn=sfpk.losses.next_token_loss" in message
    assert "the targets equal the inputs" in message and "(ids[:, :-1], ids[:, 1:])" in message
    assert_same_state(model, before)


def test_shifted_language_model_targets_still_name_next_token_loss(gpt2):
    """Already shifted targets under the default loss: refused too (no guessing)."""
    model = create(f"hf:{gpt2}", num_classes=VOCAB)
    ids = _tokens()
    with pytest.raises(DataMismatchError, match=r"next_token_loss, which takes targets\[:, t\] as"):
        _prune(model, [(ids[:, :-1], ids[:, 1:])], method="snip")


def test_language_model_with_next_token_loss_prunes_exactly(gpt2):
    """The valid call, with the loss the refusal names, is unaffected."""
    model = create(f"hf:{gpt2}", num_classes=VOCAB)
    ids = _tokens()
    masks = _prune(model, [(ids[:, :-1], ids[:, 1:])], method="sfpk", loss_fn=next_token_loss)
    assert masks.sparsity() == pytest.approx(0.5)


def test_next_token_loss_on_unshifted_targets_warns(gpt2, caplog):
    """next_token_loss does not shift: targets equal to the inputs get a warning."""
    model = create(f"hf:{gpt2}", num_classes=VOCAB)
    tokens = _tokens()[:, :TOKENS]
    with caplog.at_level(logging.WARNING, logger="sfpk.losses"):
        _prune(model, [(tokens, tokens)], method="snip", loss_fn=next_token_loss)
    assert "pass the pairs shifted by one token" in caplog.text


def test_token_ids_past_the_vocabulary_are_refused_with_next_token_loss(gpt2):
    """A target id >= V under next_token_loss names the range and the vocabulary size."""
    model = create(f"hf:{gpt2}", num_classes=VOCAB)
    ids = _tokens()
    targets = ids[:, 1:].clone()
    targets[0, 0] = VOCAB + 2
    with pytest.raises(DataMismatchError, match=r"\[0, 40\): the model's output has C=40 tokens"):
        _prune(model, [(ids[:, :-1], targets)], method="snip", loss_fn=next_token_loss)


# -- the caller's loss, and valid calls -----------------------------------------------------


def test_a_failing_loss_fn_is_named_with_its_cause():
    """A custom loss that cannot take the output is named `loss_fn`, its error kept."""

    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        return (logits - targets.view(4, 4)).square().mean()  # [16, 3] against [4, 4]

    with pytest.raises(DataMismatchError, match=r"^loss_fn failed on the first batch") as info:
        _prune(_model(), _batches(targets=torch.randn(16)), loss_fn=loss)
    assert info.value.__cause__ is not None


def test_a_loss_fn_that_does_not_reduce_is_refused():
    """A per-sample loss cannot be differentiated as one number: named, not a raw error."""

    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits, targets, reduction="none")

    with pytest.raises(DataMismatchError, match=r"returned float32 \[16\].*reduces to a scalar"):
        _prune(_model(), _batches(), loss_fn=loss)


def test_a_one_shot_iterator_keeps_its_first_batch():
    """The check reads the first batch of a one-shot iterator and puts it back: the same
    masks as from the list."""
    batches = [_batches()[0], (torch.randn(16, 8), torch.randint(0, 3, (16,)))]
    from_list = _prune(_model(), batches, batches=2)
    from_iter = _prune(_model(), iter(batches), batches=2)
    for name in from_list:
        assert torch.equal(from_list[name], from_iter[name]), name


class _Recorded:
    """A re-iterable (neither a list nor a DataLoader) that logs the batches read."""

    def __init__(self, batches) -> None:
        self.batches, self.read = batches, []

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            self.read.append(index)
            yield batch


def test_a_custom_reiterable_is_read_once_in_order():
    """The check of a custom re-iterable takes the method's own first read: no extra pass,
    the same batches in the same order."""
    data = _Recorded([_batches()[0]] * 3)
    _prune(_model(), data, method="snip", batches=2)
    assert data.read == [0, 1]


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_a_custom_reiterable_that_does_not_fit_is_refused_by_sfpk(batching):
    """The deferred check stops SFPK (both particle batchings) at its first read."""
    model = _model()
    before = snapshot(model)
    with pytest.raises(DataMismatchError, match=r"inputs float32 \[16, 5\]"):
        _prune(model, _Recorded(_batches(features=5)), method="sfpk", particle_batching=batching)
    assert_same_state(model, before)


def test_a_generator_that_does_not_fit_is_refused():
    """A one-shot generator's first batch is checked when read, not drawn early."""
    with pytest.raises(DataMismatchError, match=r"values in \[7, 7\]"):
        _prune(_model(), (b for b in _batches(targets=torch.full((16,), 7))), batches=1)


def test_valid_classification_call_is_unchanged():
    """A fitting call prunes exactly and leaves the model (the check restores its modes)."""
    model = _model()
    before = snapshot(model)
    masks = _prune(model, _batches())
    assert masks.sparsity() == pytest.approx(0.5)
    assert_same_state(model, before)


def test_the_check_runs_in_eval_mode_and_the_method_sees_the_callers_mode():
    """The check's eval-mode forward does not leak: SFPK's passes run in the caller's mode."""
    model = _model()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    _prune(model, _batches(), method="sfpk")
    assert modes[0] is False and modes[1:] and all(modes[1:])


def test_class_layout_with_a_trailing_dimension_is_not_a_language_model():
    """[B, C, L] logits for [B, L] targets (C != L) are cross-entropy's own layout: passed."""
    check_loss_targets(torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.long), loss_fn=None)
    with pytest.raises(DataMismatchError, match="looks like a language model's"):
        check_loss_targets(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), loss_fn=None)


def test_a_declared_language_model_is_refused_even_when_t_equals_v():
    """T == V fits both layouts; a model's sfpk_task="language_model" settles it."""
    logits, targets = torch.zeros(2, 4, 4), torch.zeros(2, 4, dtype=torch.long)
    check_loss_targets(logits, targets, loss_fn=None)
    with pytest.raises(DataMismatchError, match="next_token_loss"):
        check_loss_targets(logits, targets, loss_fn=None, task="language_model")


def test_the_error_is_an_sfpk_error_and_a_value_error():
    """Callers catching SfpkError (the CLI) or ValueError both catch it."""
    assert issubclass(DataMismatchError, SfpkError)
    assert issubclass(DataMismatchError, ValueError)
