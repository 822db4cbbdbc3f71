"""SFPK / SpODE split over torch.distributed ranks (gloo, 2 CPU processes) equals one process."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import sfpk
from helpers import model_and_batches, run_gloo_ranks
from sfpk.errors import ConfigError
from sfpk.training import distributed

WORLD = 2
STEPS = 3
# name -> (method, options); n=3 does not divide the world size of 2.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "even": ("sfpk", {"num_particles": 4}),  # also checkpoints every step
    "uneven": ("sfpk", {"num_particles": 3, "repulsion_weight": 1.0}),
    "spode": ("spode", {}),
    "off": ("sfpk", {"num_particles": 3}),
}


def _run_case(name: str, trace: bool) -> dict[str, Any]:
    """One seeded run of CASES[name]: masks, final state, per-step energies and pass counts."""
    method, options = CASES[name]
    model, data = model_and_batches("conv_bn", count=5)
    passes, checkpoints, energies = [0], [0], []

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        passes[0] += 1
        return F.cross_entropy(logits, targets)

    def on_checkpoint(state: dict[str, Any]) -> None:
        checkpoints[0] += 1

    observer = sfpk.PruneObserver(
        trace=(lambda info: energies.append(info["E"])) if trace else None,
        checkpoint_every=1 if name == "even" else 0,
        on_checkpoint=on_checkpoint,
    )
    result = sfpk.run_pruner(
        model, data, method=method, sparsity=0.8, seed=3, num_steps=STEPS, loss_fn=loss_fn,
        early_stop=False, observer=observer, distributed=False if name == "off" else None,
        **options,
    )  # fmt: skip
    state = result.state
    return {
        "masks": dict(result.masks),
        "particles": state["particles"],
        "score": state["score"],
        "history": [{k: v for k, v in r.items() if k != "seconds"} for r in result.history],
        "energies": energies,
        "passes": passes[0],
        "checkpoints": checkpoints[0],
    }


def _run_all() -> dict[str, dict[str, Any]]:
    return {name: _run_case(name, trace=name == "uneven") for name in CASES}


def _rank_results(rank: int) -> dict[str, Any]:
    """One rank's cases, plus a broadcast of a per-rank tensor from rank 0."""
    results: dict[str, Any] = _run_all()
    replica = torch.full((3,), float(rank + 1))
    distributed.broadcast_([replica])
    results["broadcast"] = replica
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, dict[str, Any]]]:
    """Results of every case on each of 2 spawned gloo ranks (one spawn for all tests)."""
    return run_gloo_ranks(_rank_results, WORLD, tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, Any]]:
    """The same cases in this (non-distributed) process, with the ranks' thread count.

    The thread count changes the order of floating-point reductions, so bit equality with
    the single-threaded ranks needs a single-threaded reference too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_all()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # `ranks`: 2 spawned gloo processes
@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_ends_with_the_single_process_masks_and_state(ranks, single, case):
    """Splitting the passes over ranks must not change the result on any rank (n=4, 3, 1)."""
    ref = single[case]
    for result in ranks:
        got = result[case]
        assert got["masks"].keys() == ref["masks"].keys()
        assert all(torch.equal(got["masks"][k], ref["masks"][k]) for k in ref["masks"])
        assert torch.equal(got["particles"], ref["particles"])
        assert torch.equal(got["score"], ref["score"])
        assert got["history"] == ref["history"]


@pytest.mark.slow  # `ranks`: 2 spawned gloo processes
def test_per_step_energies_equal_the_single_process_ones(ranks, single):
    """Each particle's energy comes back exactly through the all-reduce (n=3 on 2 ranks)."""
    ref = single["uneven"]["energies"]
    assert len(ref) == STEPS
    for result in ranks:
        got = result["uneven"]["energies"]
        assert len(got) == STEPS
        assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))


@pytest.mark.slow  # `ranks`: 2 spawned gloo processes
def test_each_rank_runs_only_the_passes_of_its_own_particles(ranks, single):
    """The point of scaling out: round-robin ownership, no rank repeats another's work.

    Every rank also runs the loss once on the first batch before any work (the data check
    of ``sfpk.prune_args.check_first_batch``), hence the ``check`` call on each."""
    check = 1
    assert [r["even"]["passes"] for r in ranks] == [2 * STEPS + check, 2 * STEPS + check]
    assert [r["uneven"]["passes"] for r in ranks] == [2 * STEPS + check, 1 * STEPS + check]
    assert [r["spode"]["passes"] for r in ranks] == [STEPS + check, check]
    assert [r["off"]["passes"] for r in ranks] == [3 * STEPS + check, 3 * STEPS + check]
    assert single["even"]["passes"] == 4 * STEPS + check


@pytest.mark.slow  # `ranks`: 2 spawned gloo processes
def test_checkpoints_reach_rank_zero_only(ranks, single):
    """Only rank 0 writes files, so only it receives the checkpoint state."""
    assert [r["even"]["checkpoints"] for r in ranks] == [STEPS, 0]
    assert single["even"]["checkpoints"] == STEPS


@pytest.mark.slow  # `ranks`: 2 spawned gloo processes
def test_broadcast_gives_every_rank_the_values_of_rank_zero(ranks):
    """Pipelines re-sync replicated weights with it before pruning."""
    assert all(torch.equal(r["broadcast"], torch.ones(3)) for r in ranks)


def test_helpers_answer_as_rank_zero_of_one_without_a_group():
    """Library code calls the helpers unconditionally; a plain process is rank 0 of 1."""
    assert not dist.is_initialized()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main() and not distributed.is_distributed()
    assert distributed.resolve_distributed(None) is False
    assert distributed.resolve_distributed(False) is False
    assert not distributed.init_from_env("cpu")  # no torchrun variables in this process
    replica = torch.arange(3.0)
    distributed.all_reduce_rows_(replica)
    distributed.broadcast_([replica])
    assert torch.equal(replica, torch.arange(3.0))


def test_particle_owner_is_round_robin():
    """Round-robin keeps every rank within one particle of the others for any n."""
    assert [distributed.particle_owner(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert distributed.owned_particles(5, 1, 2) == [1, 3]
    assert distributed.owned_particles(1, 1, 2) == []
    with pytest.raises(ConfigError, match="world"):
        distributed.particle_owner(0, 0)


def test_distributed_true_without_a_group_is_a_config_error():
    """Asking for a split that cannot happen must fail loudly, not silently run alone."""
    model, data = model_and_batches("mlp")
    with pytest.raises(ConfigError, match="torchrun"):
        sfpk.prune(model, data, method="sfpk", sparsity=0.5, num_steps=2, distributed=True)
