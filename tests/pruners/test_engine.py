"""The particle engine itself (``ParticleSystem``), driven directly rather than via sfpk.prune."""

from __future__ import annotations

import pytest
import torch

from helpers import model_and_batches
from sfpk.errors import CheckpointError, NonFiniteError
from sfpk.masks.core import Masks
from sfpk.pruners import PruneContext, PruneObserver, batch_stream
from sfpk.pruners.particles import ParticleOptions, ParticleSystem
from sfpk.pruners.particles.layout import FlatLayout

DENSITY = 0.3


def _engine(num_steps: int = 5, num_particles: int = 3, **options) -> tuple:
    """A fresh engine over the conv_bn test net, its masks and 4 batches."""
    torch.manual_seed(0)
    model, data = model_and_batches("conv_bn", count=4)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    masks = Masks.ones(model)
    opts = ParticleOptions(num_steps=num_steps, num_particles=num_particles, **options)
    system = ParticleSystem(
        model, FlatLayout(model, masks), opts, density=DENSITY, scope="global", ctx=PruneContext()
    )
    return system, masks, data


def test_init_from_masks_copies_the_masks_into_every_particle():
    """All particles start as the starting masks, and the schedule starts at their G (§3.1)."""
    system, masks, _ = _engine()
    system.init_from_masks(dict(masks))
    assert torch.equal(system.particles, torch.ones_like(system.particles))
    assert system.start.tolist() == [pytest.approx(1.0)]
    assert (system.step_index, system.consumed, system.stopped) == (0, 0, False)


def test_one_step_draws_one_batch_per_particle_and_lowers_the_mask_size():
    """A step consumes n batches, records itself and moves every particle toward the target."""
    system, masks, data = _engine(num_particles=3)
    system.init_from_masks(dict(masks))
    record = system.step(batch_stream(data))
    assert (system.step_index, system.consumed) == (1, 3)
    assert system.history == [record] and record["step"] == 0
    assert record["mean_G"] == pytest.approx(1.0)
    sizes = system.particles.pow(2).mean(1).sqrt()
    assert bool((sizes < 1.0).all())
    assert record["target_density"] < 1.0


def test_run_reports_every_step_and_checkpoints_on_schedule():
    """The observer sees each record and gets a state every checkpoint_every steps."""
    system, masks, data = _engine(num_steps=4, early_stop=False)
    system.init_from_masks(dict(masks))
    records, states = [], []
    observer = PruneObserver(
        on_step=records.append, checkpoint_every=2, on_checkpoint=states.append
    )
    scores = system.run(data, observer)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert [s["step"] for s in states] == [2, 4]
    assert scores.shape == (system.layout.num_entries,) and bool(torch.isfinite(scores).all())


def test_state_dict_round_trip_continues_identically():
    """A fresh engine loaded with a mid-run state finishes exactly like the original."""
    full, masks, data = _engine(num_steps=4, early_stop=False)
    full.init_from_masks(dict(masks))
    states = []
    full.run(data, PruneObserver(checkpoint_every=2, on_checkpoint=states.append))
    resumed, _, _ = _engine(num_steps=4, early_stop=False)
    resumed.load_state_dict(states[0])
    assert resumed.step_index == 2 and resumed.consumed == 6
    resumed.run(data)
    assert torch.equal(full.particles, resumed.particles)
    assert torch.equal(full.scores, resumed.scores)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_continue_from_carries_particles_and_scores_and_restarts_the_schedule():
    """Iterative continuation (§2.13): particles and S carry over, start = mean G, step 0."""
    first, masks, data = _engine(num_steps=3)
    first.init_from_masks(dict(masks))
    first.run(data)
    state = first.state_dict()
    second, _, _ = _engine(num_steps=3)
    second.continue_from(state)
    assert torch.equal(second.particles, state["particles"])
    assert torch.equal(second.scores, state["score"])
    assert second.step_index == 0
    mean_g = first.particles.pow(2).mean(1).sqrt().mean()
    assert float(second.start[0]) == pytest.approx(float(mean_g), rel=1e-5)


@pytest.mark.parametrize("early_stop, steps", [(True, 1), (False, 5)])
def test_early_stop_ends_the_run_once_the_target_is_reached(early_stop, steps):
    """Particles already below the target stop after one step with early_stop (§2.11)."""
    system, masks, data = _engine(num_steps=5, num_particles=2, early_stop=early_stop)
    system.init_from_masks({n: torch.full_like(m, 0.2) for n, m in masks.items()})
    system.run(data)
    assert system.stopped == early_stop and system.step_index == steps
    assert system.history[0]["mean_G"] == pytest.approx(0.2)


def test_a_state_for_other_masks_is_refused():
    """Loading particles of another shape must fail loudly, not broadcast silently."""
    small, masks, data = _engine(num_particles=2)
    small.init_from_masks(dict(masks))
    state = small.state_dict()
    other, _, _ = _engine(num_particles=3)
    with pytest.raises(CheckpointError, match="does not fit"):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError, match="does not fit"):
        other.continue_from(state)


def _record_threads(system, monkeypatch) -> dict[str, list[int]]:
    """Record the intra-op thread count of every network pass and of every repulsion."""
    seen: dict[str, list[int]] = {"passes": [], "repulsion": []}
    system.model.register_forward_hook(lambda *_: seen["passes"].append(torch.get_num_threads()))
    import sfpk.pruners.particles.engine as engine

    original = engine.repulsion

    def repulsion(*args, **kwargs):
        seen["repulsion"].append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "repulsion", repulsion)
    return seen


def test_step_runs_passes_on_the_callers_threads_and_its_vector_work_on_one(monkeypatch):
    """At the default thread count the passes keep every thread, the small per-step vector
    work runs on one (no OpenMP wake-up per tiny kernel), and the caller's count returns."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        system, masks, data = _engine(num_particles=3)
        system.init_from_masks(dict(masks))
        seen = _record_threads(system, monkeypatch)
        system.step(batch_stream(data))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == {"passes": [2, 2, 2], "repulsion": [1]}
    assert after == 2


def test_step_gives_the_callers_threads_back_when_it_raises():
    """A step stopped by an error (a NaN energy) leaves the caller on its own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        system, masks, data = _engine(num_particles=2)
        system.init_from_masks(dict(masks))
        bad = [(torch.full_like(x, float("nan")), y) for x, y in data]
        with pytest.raises(NonFiniteError):
            system.step(batch_stream(bad))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == 2
