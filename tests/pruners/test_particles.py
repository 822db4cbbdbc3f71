"""SFPK / SpODE through ``sfpk.prune``: sparsity, equivalences, diversity, state and resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import sfpk
from helpers import assert_same_state, model_and_batches, snapshot
from sfpk.errors import CheckpointError, ConfigError

FAST = dict(num_steps=6, num_particles=3)


def _run(
    name="conv_bn", method="sfpk", sparsity=0.8, seed=0, *, on_checkpoint=None,
    checkpoint_every=0, trace=None, start=None, progress=False, **options,
) -> sfpk.PruneResult:  # fmt: skip
    model, data = model_and_batches(name, count=4)
    observer = sfpk.PruneObserver(
        progress=progress, trace=trace, checkpoint_every=checkpoint_every,
        on_checkpoint=on_checkpoint,
    )  # fmt: skip
    return sfpk.run_pruner(
        model, data, method=method, sparsity=sparsity, seed=seed, start=start,
        observer=observer, **options,
    )  # fmt: skip


def _prune(*args, **kwargs) -> sfpk.Masks:
    return _run(*args, **kwargs).masks


def _scores(result: sfpk.PruneResult) -> torch.Tensor:
    return result.state["score"]


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel"])
@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("method", ["sfpk", "spode"])
def test_exact_sparsity_for_every_structure_and_scope(structure, scope, method):
    """The final top-k hits the target exactly (structured: up to one group per layer)."""
    options = dict(FAST) if method == "sfpk" else {"num_steps": 6}
    masks = _prune("residual", method, 0.7, structure=structure, scope=scope, **options)
    sfpk.selection.topk.check_achieved_sparsity(masks, 0.7, scope)
    assert all(((m == 0) | (m == 1)).all() for m in masks.values())
    if structure == "unstructured" and scope == "global":
        assert masks.total_weights() - masks.kept_weights() == int(0.7 * masks.total_weights())


def test_one_particle_without_repulsion_is_spode():
    """SFPK with n=1, λ=0 and SpODE's switches is the same computation as SpODE."""
    common = dict(num_steps=5, early_stop=False, reference_batch_order=True, start_one=True)
    a = _run(method="sfpk", num_particles=1, repulsion_weight=0.0, **common)
    b = _run(method="spode", **common)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert torch.equal(_scores(a), _scores(b))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]


def test_spode_defaults_use_the_cyclic_stream():
    """Our SpODE default reads a new batch each step (the reference re-reads the first one)."""
    model, data = model_and_batches("mlp", count=3)
    seen = []
    ids = {id(x): k for k, (x, _) in enumerate(data)}

    class Recorder(list):
        def __iter__(self):
            for batch in super().__iter__():
                seen.append(ids[id(batch[0])])
                yield batch

    sfpk.prune(model, Recorder(data), method="spode", sparsity=0.5, num_steps=4)
    assert seen == [0, 1, 2, 0]


def test_repulsion_keeps_particles_diverse():
    """With λ > 0 the particles end further apart than without (same seed and batches)."""
    on = _run(num_steps=8, num_particles=4, repulsion_weight=2.0)
    off = _run(num_steps=8, num_particles=4, repulsion_weight=0.0)
    assert on.history[-1]["distance"] > off.history[-1]["distance"] > 0
    assert on.history[-1]["repulsion"] > 0 == off.history[-1]["repulsion"]


def test_seeded_runs_are_identical():
    """Same seed, same data: identical masks, scores and per-step records."""
    a, b = _run(**FAST), _run(**FAST)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert torch.equal(_scores(a), _scores(b))
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_history_records_every_step():
    """PruneResult.history has one record per step with the documented fields."""
    masks = _run(**FAST)
    assert [r["step"] for r in masks.history] == list(range(FAST["num_steps"]))
    keys = {"step", "target_density", "mean_G", "loss", "distance", "repulsion"}
    assert keys | {"attraction", "seconds"} == set(masks.history[0])
    levels = [r["target_density"] for r in masks.history]
    assert levels == sorted(levels, reverse=True) and levels[-1] == pytest.approx(0.2)


def test_momentum_accumulates_the_voted_scores():
    """S_t = s̄_t + μ S_(t-1), starting from S = 0 (spec §2.10)."""
    steps = []
    _prune(**FAST, momentum=0.3, trace=steps.append)
    previous = torch.zeros_like(steps[0]["voted"])
    for step in steps:
        assert torch.allclose(step["momentum"], step["voted"] + 0.3 * previous)
        previous = step["momentum"]


def test_vote_ratio_selects_the_lowest_energies():
    """vote_ratio 0.5 of 4 particles: the two lowest energies vote."""
    steps = []
    _prune(num_steps=2, num_particles=4, vote_ratio=0.5, trace=steps.append)
    for step in steps:
        assert step["voters"] == torch.argsort(step["E"], stable=True)[:2].tolist()


@pytest.mark.parametrize("processor", ["ohh", "ohhm", "oh", "ohm", "qt", "qtm", "gau", "gaum"])
def test_every_processor_runs(processor):
    """Each mask processor of spec §2.5 drives a run to the exact target."""
    masks = _run(**FAST, processor=processor)
    assert masks.masks.sparsity() == pytest.approx(0.8, abs=0.01)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in masks.history)


@pytest.mark.parametrize(
    "options",
    [
        dict(score="m"),
        dict(score="mpz"),
        dict(repulsion="cos"),
        dict(repulsion="none"),
        dict(weighted_kernel=False),
        dict(rank_by_weight=False),
        dict(vote="hard"),
        dict(vote="hard", scope="local"),
        dict(vote="hard", structure="filter"),
        dict(ode_scope="local"),
        dict(ode_scope="local", scope="local", structure="channel"),
        dict(size_functional="l1"),
        dict(dt_schedule="lin"),
        dict(dt_schedule="invexp"),
        dict(dt_schedule="adalin"),
        dict(radius_schedule="invexp"),
        dict(radius_schedule="hess"),
    ],
)
def test_option_variants_run(options):
    """Every documented variant (incl. the ones the reference crashes on, §9.4) works."""
    masks = _run(**FAST, **options)
    assert len(masks.history) >= 1 and torch.isfinite(_scores(masks)).all()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(radius_ratio=1.0), "radius_ratio"),
        (dict(dt_schedule="hess"), "broken"),
        (dict(radius_schedule="auto"), "radius_schedule"),
        (dict(processor="Id"), "processor"),
        (dict(repulsion="exp_layer"), "repulsion"),
        (dict(vote_ratio=1.5), "vote_ratio"),
        (dict(num_particles=0), "num_particles"),
        (dict(size_functional="l1p"), "size_functional"),
    ],
)
def test_bad_options_are_rejected(options, match):
    """Bad values raise ConfigError naming the option."""
    with pytest.raises(ConfigError, match=match):
        sfpk.create_pruner("sfpk", **options)


def test_spode_has_no_particle_options():
    """SpODE fixes n = 1 and λ = 0: those knobs are not its options."""
    with pytest.raises(ConfigError, match="num_particles"):
        sfpk.create_pruner("spode", num_particles=3)


def test_prune_leaves_the_model_unchanged():
    """Weights, BN statistics, modes and requires_grad are as before (θ is never written)."""
    model, data = model_and_batches("conv_bn", count=3)
    before = snapshot(model)
    sfpk.prune(model, data, method="sfpk", sparsity=0.8, **FAST)
    assert_same_state(model, before)


def test_resume_from_a_checkpoint_is_bit_identical():
    """A run resumed from its state at step k ends with the same masks and scores."""
    states = []
    options = dict(num_steps=6, num_particles=3, checkpoint_every=2)
    full = _run(**options, on_checkpoint=states.append)
    assert [s["step"] for s in states] == [2, 4, 6]
    resumed = _run(**options, start=sfpk.StartState(states[0], resume=True))
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    assert torch.equal(_scores(full), _scores(resumed))
    assert torch.equal(full.state["particles"], resumed.state["particles"])
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_resume_state_must_fit():
    """A state from another configuration is refused with a clear error."""
    states = []
    _prune(num_steps=4, num_particles=3, checkpoint_every=2, on_checkpoint=states.append)
    with pytest.raises(CheckpointError, match="particle state"):
        _prune(num_steps=4, num_particles=2, start=sfpk.StartState(states[0], resume=True))
    with pytest.raises(CheckpointError, match="num_steps"):
        _prune(num_steps=5, num_particles=3, start=sfpk.StartState(states[0], resume=True))


def test_continuation_keeps_masks_nested():
    """Iterative rounds: particles and S carry over and pruned entries stay pruned (§9.5)."""
    model, data = model_and_batches("conv_bn", count=4)
    first = sfpk.run_pruner(model, data, method="sfpk", sparsity=0.5, **FAST)
    second = sfpk.run_pruner(
        model, data, method="sfpk", sparsity=0.8, masks=first.masks,
        start=sfpk.StartState(first.state), **FAST,
    )  # fmt: skip
    assert all(bool((second.masks[n] <= first.masks[n]).all()) for n in first.masks)
    assert second.masks.sparsity() == pytest.approx(0.8, abs=0.01)
    assert second.history[0]["mean_G"] < 1.0  # started from the carried particles


def test_progress_bar_does_not_change_results():
    """observer.progress only adds a tqdm bar."""
    a = _prune(**FAST, progress=True)
    b = _prune(**FAST)
    assert all(torch.equal(a[n], b[n]) for n in a)


# -- usefulness on real data ---------------------------------------------------------------
def _mnist1d():
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x, y = torch.as_tensor(data["x"]).float(), torch.as_tensor(data["y"]).long()
    xt, yt = torch.as_tensor(data["x_test"]).float(), torch.as_tensor(data["y_test"]).long()
    return x, y, xt, yt


def _accuracy(model: nn.Module, masks: sfpk.Masks, x, y) -> float:
    model = masks.apply(model)
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.mark.slow  # trains an MLP for 40 epochs first
def test_sfpk_beats_random_at_90_percent_on_mnist1d():
    """Before fine-tuning, SFPK at 90 % removed keeps far more accuracy than random pruning."""
    x, y, xt, yt = _mnist1d()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        for idx in torch.randperm(len(y)).split(200):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    data = [(x[idx], y[idx]) for idx in torch.randperm(len(y)).split(512)]
    dense = _accuracy(model, sfpk.Masks.ones(model), xt, yt)
    ours = sfpk.prune(model, data, method="sfpk", sparsity=0.9, num_steps=30, num_particles=4)
    rand = sfpk.prune(model, data, method="rand", sparsity=0.9)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    acc_sfpk = _accuracy(model, ours, xt, yt)
    model.load_state_dict(state)
    acc_rand = _accuracy(model, rand, xt, yt)
    assert dense > 0.5
    assert acc_sfpk > acc_rand + 0.15, (acc_sfpk, acc_rand, dense)


# -- regressions: local scopes, templates, resume ------------------------------------------
class _Augmented(list):
    """Batches with noise drawn from the global torch RNG on every pass (like augmentation)."""

    def __iter__(self):
        for x, y in super().__iter__():
            yield x + 0.1 * torch.randn_like(x), y


class _Reshuffled:
    """A re-iterable that reshuffles with its own seeded generator at every ``iter()``."""

    def __init__(self, batches):
        self.batches, self.generator = batches, torch.Generator().manual_seed(5)

    def __iter__(self):
        order = torch.randperm(len(self.batches), generator=self.generator).tolist()
        return iter([self.batches[k] for k in order])


@pytest.mark.parametrize(
    "wrap, options", [(_Augmented, {}), (_Reshuffled, {"reference_batch_order": True})]
)
def test_resume_is_bit_identical_with_data_that_draws_random_numbers(wrap, options):
    """Replayed batches must not shift the RNG or skip the data's own reshuffles."""
    model, data = model_and_batches("conv_bn", count=4)
    options = dict(num_steps=4, num_particles=2, checkpoint_every=2, **options)
    every = options.pop("checkpoint_every")
    states = []
    observer = sfpk.PruneObserver(checkpoint_every=every, on_checkpoint=states.append)
    full = sfpk.run_pruner(model, wrap(data), method="sfpk", sparsity=0.8,
                           observer=observer, **options)  # fmt: skip
    resumed = sfpk.run_pruner(model, wrap(data), method="sfpk", sparsity=0.8,
                              start=sfpk.StartState(states[0], resume=True),
                              **options)  # fmt: skip
    assert torch.equal(full.state["particles"], resumed.state["particles"])
    assert torch.equal(_scores(full), _scores(resumed))


def test_resume_state_of_another_scope_is_refused():
    """A global-scope state has one start level; a local-scope run needs one per layer."""
    states = []
    _prune(num_steps=4, num_particles=2, checkpoint_every=2, on_checkpoint=states.append)
    with pytest.raises(CheckpointError, match="scope"):
        resume = sfpk.StartState(states[0], resume=True)
        _prune(num_steps=4, num_particles=2, scope="local", start=resume)


def test_hard_vote_cuts_at_the_final_scope_not_the_ode_scope():
    """ode_scope="local" with global scope: the hard vote is one global cut (§2.10)."""
    from sfpk.pruners.particles.processors import ThresholdLayout
    from sfpk.pruners.particles.voting import hard_cut

    steps = []
    _prune(**FAST, vote="hard", ode_scope="local", trace=steps.append)
    for step in steps:
        for index, raw in step["scores_raw"].items():
            expected = hard_cut(raw, 0.2, ThresholdLayout())
            assert torch.equal(step["scores_voted"][index], expected)


def test_template_masks_act_whether_or_not_baked_into_the_weights():
    """Entries pruned in the starting masks are absent from the simulated network (§9.5)."""
    model, data = model_and_batches("conv_bn", count=4)
    template = sfpk.prune(model, data, method="mag", sparsity=0.5)
    baked = template.apply(copy.deepcopy(model))
    a = sfpk.run_pruner(model, data, method="sfpk", sparsity=0.8, masks=template, **FAST)
    b = sfpk.run_pruner(baked, data, method="sfpk", sparsity=0.8, masks=template, **FAST)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert torch.equal(_scores(a), _scores(b))


@pytest.mark.parametrize("processor", ["qt", "gau"])
def test_soft_processors_survive_starting_masks_with_many_zeros(processor):
    """A later round (baked zeros, tied quantiles q_hi = q_lo) must not divide by zero."""
    model, data = model_and_batches("conv_bn", count=4)
    template = sfpk.prune(model, data, method="mag", sparsity=0.5)
    template.apply(model)
    result = sfpk.run_pruner(model, data, method="sfpk", sparsity=0.8, masks=template,
                             processor=processor, **FAST)  # fmt: skip
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert torch.isfinite(_scores(result)).all()
    assert result.masks.sparsity() == pytest.approx(0.8, abs=0.01)
