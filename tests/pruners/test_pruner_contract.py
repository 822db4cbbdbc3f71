"""The pruner contract: one way in (``Pruner.prune``), one way out (``PruneResult``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

import sfpk
from helpers import model_and_batches, tiny_options
from sfpk.errors import ConfigError
from sfpk.pruners import ScorePruner, register
from sfpk.pruners.base import _REGISTRY

PLUMBING = {
    "continue_from",
    "resume_state",
    "checkpoint_every",
    "checkpoint_callback",
    "trace_callback",
    "distributed",
    "progress",
}


@pytest.mark.parametrize("method", sfpk.methods())
def test_options_are_hyperparameters_only(method):
    """No callback, state or plumbing can be set as a method option (CLI, YAML or API)."""
    for field in dataclasses.fields(sfpk.pruner_class(method).Options):
        assert field.name not in PLUMBING, field.name
        default = field.default
        assert not callable(default) and not isinstance(default, dict | list), field.name


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_returns_a_prune_result(method):
    """run_pruner gives masks, history and state the same way for every method."""
    model, data = model_and_batches("conv_bn", count=3)
    result = sfpk.run_pruner(model, data, method=method, sparsity=0.6, **tiny_options(method))
    assert isinstance(result, sfpk.PruneResult)
    assert isinstance(result.masks, sfpk.Masks)
    assert result.masks.method == method and result.masks.target_sparsity == 0.6
    if method in ("sfpk", "spode"):
        assert len(result.history) == tiny_options(method)["num_steps"]
        assert result.state is not None and "particles" in result.state
    else:
        assert result.history == [] and result.state is None
    assert not hasattr(result.masks, "history") and not hasattr(result.masks, "engine_state")


@pytest.mark.parametrize("method", sfpk.methods())
def test_prune_returns_the_masks_of_run_pruner(method):
    """sfpk.prune is run_pruner(...).masks: the two entry points agree exactly."""
    model, data = model_and_batches("mlp", count=3)
    options = tiny_options(method)
    masks = sfpk.prune(model, data, method=method, sparsity=0.6, seed=2, **options)
    result = sfpk.run_pruner(model, data, method=method, sparsity=0.6, seed=2, **options)
    assert all(torch.equal(masks[n], result.masks[n]) for n in masks)


def test_a_score_method_has_no_state_to_start_from():
    """Passing a start state to a stateless method is an error, not silently ignored."""
    model, data = model_and_batches("mlp")
    with pytest.raises(ConfigError, match="no state"):
        sfpk.run_pruner(model, data, method="mag", sparsity=0.5, start=sfpk.StartState({"step": 0}))


def test_observer_sees_every_step():
    """on_step receives the same records the result's history holds."""
    model, data = model_and_batches("mlp", count=3)
    seen: list[dict] = []
    result = sfpk.run_pruner(
        model, data, method="spode", sparsity=0.5, num_steps=3,
        observer=sfpk.PruneObserver(on_step=seen.append),
    )  # fmt: skip
    assert seen == result.history and len(seen) == 3


def test_bad_checkpoint_interval_is_rejected():
    """A negative checkpoint_every is a configuration error, named."""
    with pytest.raises(ConfigError, match="checkpoint_every"):
        sfpk.PruneObserver(checkpoint_every=-1)


@pytest.fixture
def registered() -> Callable[[type], type]:
    """Register test pruners and remove them afterwards (the registry is global)."""
    added: list[str] = []

    def add(cls: type) -> type:
        register(cls)
        added.append(cls.name)
        return cls

    yield add
    for name in added:
        _REGISTRY.pop(name, None)


def test_adding_a_method_is_adding_one_class(registered):
    """A user's ScorePruner works through sfpk.prune with exact sparsity and rounds."""
    calls: list[float] = []

    @registered
    class Largest(ScorePruner):
        name = "test_largest"
        needs_data = False

        def rounds(self) -> int:
            return 3

        def score(self, model, data, masks, ctx, prepared=None):
            calls.append(masks.sparsity())
            params = dict(model.named_parameters())
            return {n: params[n].detach().abs() for n in masks}

    model, data = model_and_batches("mlp")
    masks = sfpk.prune(model, data, method="test_largest", sparsity=0.875)
    assert masks.total_weights() - masks.kept_weights() == int(0.875 * masks.total_weights())
    # Round k of 3 starts from round k-1's masks: densities 1, 0.5, 0.25 -> final 0.125.
    assert calls == pytest.approx([0.0, 0.5, 0.75], abs=0.01)
