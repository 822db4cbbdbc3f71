"""Rank logic on top of ``torch.distributed`` (launched by ``torchrun``), nothing home-made.

sfpk never starts processes or opens sockets itself: the caller (``torchrun`` plus
``torch.distributed.init_process_group``) owns the process group, and these helpers only
read it. Without an initialised group every function answers as a single process
(rank 0 of 1), so library code can call them unconditionally.

The particle engine splits its per-particle forward+backward passes round-robin over the
ranks (:func:`particle_owner`); each rank fills only its own rows of the ``[n, P]`` force
buffer, leaves the others at zero, and one SUM all-reduce (:func:`all_reduce_rows_`) gives
every rank every row. Adding exact zeros is exact, so the result equals the single-process
run bit for bit (up to the sign of zero entries). Whatever backend the group uses works:
gloo on CPU, nccl on GPU (tensors must then live on the rank's CUDA device).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "particle_owner",
    "owned_particles",
    "resolve_distributed",
    "all_reduce_rows_",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without an initialised group)."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes in the default group (1 without an initialised group)."""
    return dist.get_world_size() if _initialized() else 1


def is_distributed() -> bool:
    """True when a ``torch.distributed`` group is initialised with more than one rank."""
    return world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the only rank that logs and writes."""
    return rank() == 0


def particle_owner(index: int, world: int) -> int:
    """The rank that runs particle ``index``'s forward+backward: round-robin, ``index % world``.

    Round-robin keeps the load balanced to within one particle for any ``n`` and ``world``.

    Raises:
        ConfigError: ``index < 0`` or ``world < 1``.
    """
    if index < 0 or world < 1:
        raise ConfigError(
            f"particle_owner(index={index!r}, world={world!r}): need index >= 0 and world >= 1"
        )
    return index % world


def owned_particles(num_particles: int, rank_: int, world: int) -> list[int]:
    """The particle indices ``rank_`` owns under :func:`particle_owner` (may be empty)."""
    return [i for i in range(num_particles) if particle_owner(i, world) == rank_]


def resolve_distributed(flag: bool | None) -> bool:
    """Decide whether to split particles across ranks.

    Args:
        flag: ``None`` (auto: split when :func:`is_distributed`), ``True`` (require an
            initialised group; with one rank it is a no-op) or ``False`` (never: every rank
            runs every particle itself).

    Raises:
        ConfigError: ``flag=True`` without an initialised ``torch.distributed`` group.
    """
    if flag is None:
        return is_distributed()
    if flag and not _initialized():
        raise ConfigError(
            "distributed=True needs an initialised torch.distributed process group "
            "(launch with torchrun and call torch.distributed.init_process_group first); "
            "use distributed=None (auto) or False for a single process"
        )
    return bool(flag) and world_size() > 1


def all_reduce_rows_(*tensors: Tensor) -> None:
    """SUM-all-reduce each tensor in place (one collective per tensor, in argument order).

    Used on per-step buffers (forces ``[n, P]``, energies ``[n]``) where every rank wrote
    only the rows of the particles it owns and left all other rows at exactly zero, so the
    sum is the exact, rank-independent gather of all rows. Every rank must call this with
    tensors of the same shapes and dtypes, in the same order. No-op in a single process.
    """
    if not is_distributed():
        return
    nccl = dist.get_backend() == "nccl"
    for tensor in tensors:
        if nccl and tensor.device.type != "cuda":
            raise ConfigError(
                f"the nccl backend reduces CUDA tensors only, got one on {tensor.device}; "
                "run the model on this rank's cuda device (or use the gloo backend)"
            )
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
