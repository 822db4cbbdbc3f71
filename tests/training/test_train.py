"""Trainer: pruned weights stay exactly zero, accumulation, evaluation, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from sfpk.errors import ConfigError, SfpkError
from sfpk.losses import next_token_loss
from sfpk.training.optimizers import OptimizerConfig, make_optimizer
from sfpk.training.trainer import Trainer, select_device

CPU = torch.device("cpu")


def _data(n: int = 64, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _pruned_entries(model: nn.Module, masks: sfpk.Masks) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n][m == 0] for n, m in masks.items()]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay(optimizer):
    """Momentum filled before pruning would revive pruned weights unless masks are re-applied."""
    data = _data()
    model = _model()
    options = OptimizerConfig(
        optimizer=optimizer, momentum=0.9, nesterov=optimizer == "sgd", weight_decay=0.1
    )
    dense = Trainer(model, options, device=CPU, progress=False)
    dense.train_epoch(data, lr=0.1)  # fills momentum / Adam moments for every weight
    masks = sfpk.prune(model, data, method="mag", sparsity=0.7)
    trainer = Trainer(model, options, device=CPU, masks=masks, progress=False)
    trainer.load_state_dict(dense.state_dict())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        trainer.train_epoch(data, lr=0.1)
    assert all(bool((values == 0).all()) for values in _pruned_entries(model, masks))
    kept_changed = [
        not torch.equal(p[masks[n] != 0], before[n][masks[n] != 0])
        for n, p in model.named_parameters()
        if n in masks
    ]
    assert all(kept_changed)


def test_gradient_accumulation_matches_one_big_batch():
    """Dividing each loss by the group size makes 2 x 8 accumulated equal one batch of 16."""
    big = _data(batch=16)
    small = _data(batch=8)
    a, b = _model(), _model()
    opts = dict(optimizer="sgd", momentum=0.0)
    Trainer(a, OptimizerConfig(**opts), device=CPU, progress=False).train_epoch(big, lr=0.1)
    accumulated = OptimizerConfig(**opts, grad_accum_steps=2)
    Trainer(b, accumulated, device=CPU, progress=False).train_epoch(small, lr=0.1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_trailing_partial_accumulation_group_is_stepped_not_dropped():
    """Unlike the reference (§8.26), 5 batches with accumulation 2 give 3 optimizer steps."""
    data = _data(n=40, batch=8)  # 5 batches
    trainer = Trainer(
        _model(), OptimizerConfig(optimizer="adam", grad_accum_steps=2), device=CPU, progress=False
    )
    trainer.train_epoch(data, lr=1e-3)
    steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {3}


def test_evaluate_reports_loss_top1_top5():
    """Top-1 / top-5 are fractions of correct predictions; loss is mean cross-entropy."""
    model = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.diag(torch.arange(1.0, 7.0)))
        model.weight[0, 5] = -1.0  # sample 5: true class 0 gets the lowest logit
    x = torch.eye(6)
    y = torch.tensor([0, 1, 2, 3, 4, 0])  # sample 5 ranks its true class 6th of 6
    result = Trainer(model, OptimizerConfig(), device=CPU, progress=False).evaluate([(x, y)])
    expected_loss = nn.functional.cross_entropy(model(x), y).item()
    assert result.top1 == pytest.approx(5 / 6)
    assert result.top5 == pytest.approx(5 / 6)
    assert result.loss == pytest.approx(expected_loss)


def test_training_reports_nan_loss():
    """A diverged run must stop with a clear error, not train on NaNs."""
    data = [(torch.full((4, 10), float("nan")), torch.zeros(4, dtype=torch.long))]
    trainer = Trainer(_model(), OptimizerConfig(), device=CPU, progress=False)
    with pytest.raises(SfpkError, match="nan"):
        trainer.train_epoch(data, lr=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "rmsprop"},
        {"momentum": -0.1},
        {"weight_decay": -1.0},
        {"grad_accum_steps": 0},
        {"grad_clip": 0.0},
        {"label_smoothing": 1.0},
        {"optimizer": "adam", "nesterov": True},
        {"epochs": -1},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr_min": -1e-3},
    ],
)
def test_optimizer_config_rejects_bad_values(kwargs):
    """Bad optimizer settings are ConfigErrors at construction, before any training."""
    with pytest.raises(ConfigError):
        OptimizerConfig(**kwargs)


def test_make_optimizer_builds_requested_class():
    """sgd (with Nesterov), adam and adamw map to the torch optimizers."""
    params = [nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(params, OptimizerConfig(nesterov=True), lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    adamw = OptimizerConfig(optimizer="adamw")
    assert isinstance(make_optimizer(params, adamw, lr=0.1), torch.optim.AdamW)


def test_select_device():
    """'auto' picks CUDA only when present; unknown names are ConfigErrors."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == CPU
    with pytest.raises(ConfigError):
        select_device("tpu-ish")


# -- language models ----------------------------------------------------------------------


class _TokenModel(nn.Module):
    """Embedding + linear head: logits [B, T, V] for token ids [B, T]."""

    def __init__(self, vocab: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _token_batches(sizes: list[int], length: int = 5, vocab: int = 6):
    g = torch.Generator().manual_seed(3)

    def tokens(batch: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=g)

    return [(tokens(b), tokens(b)) for b in sizes]


def test_language_model_perplexity_is_exp_of_the_token_weighted_mean_loss():
    """Unequal batches (3, 1, 2 sequences) weigh by their tokens, not one per batch."""
    model, batches = _TokenModel(), _token_batches([3, 1, 2])
    result = Trainer(model, OptimizerConfig(), device=CPU, progress=False, task="language_model")
    evaluated = result.evaluate(batches)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches]).reshape(-1, 6)
        targets = torch.cat([y for _, y in batches]).reshape(-1)
    token_loss = nn.functional.cross_entropy(logits, targets).item()
    with torch.no_grad():
        batch_mean = sum(next_token_loss(model(x), y).item() for x, y in batches) / len(batches)
    assert evaluated.loss == pytest.approx(token_loss, rel=1e-6)
    assert evaluated.loss != pytest.approx(batch_mean, rel=1e-6)  # the sizes matter here
    assert evaluated.perplexity == pytest.approx(torch.tensor(token_loss).exp().item(), rel=1e-6)
    accuracy = (logits.argmax(1) == targets).float().mean().item()
    assert evaluated.top1 == pytest.approx(accuracy)


def test_language_model_training_reports_token_weighted_loss_and_accuracy():
    """train_epoch averages over the 6 * 5 tokens it saw and lowers the next-token loss."""
    model, batches = _TokenModel(), _token_batches([3, 1, 2])
    trainer = Trainer(
        model, OptimizerConfig(optimizer="adam"), device=CPU, progress=False, task="language_model"
    )
    before = trainer.evaluate(batches).loss
    for _ in range(20):
        result = trainer.train_epoch(batches, lr=0.05)
    assert trainer.evaluate(batches).loss < before
    assert 0.0 <= result.acc <= 1.0 and result.acc * 30 == pytest.approx(round(result.acc * 30))


def test_classifier_output_under_the_language_model_task_fails_clearly():
    """A [B, C] classifier on an LM data set is a configuration mistake, not a broadcast."""
    trainer = Trainer(_model(), OptimizerConfig(), device=CPU, task="language_model")
    with pytest.raises(SfpkError, match=r"\[B, T, V\]"):
        trainer.evaluate(_data(n=8))


def test_unknown_task_is_refused():
    """The task names the loss; a typo must not fall back to classification."""
    with pytest.raises(ConfigError, match="language_model"):
        Trainer(_model(), OptimizerConfig(), device=CPU, task="lm")
