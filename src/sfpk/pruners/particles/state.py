"""Checkpoint state of the particle engine: capture, validation, restore (docs/sfpk.md).

A state is a plain dict of tensor copies and numbers, taken after a completed step, so an
interrupted run resumes bit-identically (:meth:`ParticleSystem.load_state_dict`) and an
iterative round continues from the previous one (:meth:`ParticleSystem.continue_from`).
Kept apart from the step loop so that the engine module holds the dynamics only.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import Tensor

from ...errors import CheckpointError
from .layout import FlatLayout

__all__ = [
    "STATE_VERSION",
    "SimulationState",
    "capture_state",
    "check_state",
    "restore_state",
    "restore_rng",
]

STATE_VERSION = 1


class SimulationState(Protocol):
    """What a checkpoint reads from and writes into the engine (its mutable state).

    :class:`sfpk.pruners.particles.engine.ParticleSystem` has these attributes; declaring
    them here keeps this module below the engine (no import back into it).
    """

    layout: FlatLayout
    options: Any
    density: float
    particles: Tensor
    scores: Tensor
    start: Tensor
    dropped: Tensor
    step_index: int
    consumed: int
    stopped: bool
    calibration: Tensor
    history: list[dict[str, Any]]


def capture_state(system: SimulationState) -> dict[str, Any]:
    """Everything needed to resume ``system`` bit-identically (tensors are copies)."""
    rng = {"cpu": torch.get_rng_state()}
    if system.layout.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(system.layout.device)
    return {
        "version": STATE_VERSION,
        "names": list(system.layout.names),
        "num_entries": system.layout.num_entries,
        "num_steps": system.options.num_steps,
        "density": system.density,
        "particles": system.particles.detach().clone(),
        "score": system.scores.detach().clone(),
        "start": system.start.clone(),
        "dropped": system.dropped.clone(),
        "step": system.step_index,
        "consumed": system.consumed,
        "stopped": system.stopped,
        "calibration": system.calibration.clone(),
        "rng": rng,
        "history": copy.deepcopy(system.history),
    }


def check_state(system: SimulationState, state: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` holds particles for these masks.

    Raises:
        CheckpointError: unknown version, other mask names or particle shape.
    """
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"particle state version {state.get('version')!r} unsupported")
    particles = system.particles
    if state["names"] != system.layout.names or tuple(state["particles"].shape) != tuple(
        particles.shape
    ):
        raise CheckpointError(
            "particle state does not fit: it holds "
            f"{tuple(state['particles'].shape)} particles for {len(state['names'])} masks, "
            f"this run needs {tuple(particles.shape)} for {system.layout.num_layers}"
        )


def restore_state(system: SimulationState, state: dict[str, Any]) -> None:
    """Load a :func:`capture_state` dict into ``system`` (same options, data and masks).

    Raises:
        CheckpointError: the state does not fit (see :func:`check_state`), or it was taken
            with another ``num_steps``, target density or scope.
    """
    check_state(system, state)
    if state["num_steps"] != system.options.num_steps or state["density"] != system.density:
        raise CheckpointError(
            f"resume state is for num_steps={state['num_steps']}, density="
            f"{state['density']}; this run has {system.options.num_steps}, {system.density}"
        )
    if state["start"].shape != system.start.shape:
        raise CheckpointError(
            f"resume state has {state['start'].numel()} start level(s), this run needs "
            f"{system.start.numel()}: it was taken with another scope or ode_scope"
        )
    system.particles.copy_(state["particles"])
    system.scores.copy_(state["score"])
    system.start.copy_(state["start"])
    system.dropped.copy_(state["dropped"])
    system.step_index, system.consumed = int(state["step"]), int(state["consumed"])
    system.stopped = bool(state["stopped"])
    system.calibration.copy_(state["calibration"])
    system.history = copy.deepcopy(state["history"])


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Set the CPU (and ``device``'s CUDA) generator states saved by :func:`capture_state`.

    A state saved on a GPU resumes on CPU: its CUDA generator state is then not needed
    (every random draw of a CPU run comes from the CPU generator) and is left unused.
    """
    torch.set_rng_state(rng["cpu"].cpu())
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
