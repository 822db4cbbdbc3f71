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

import datetime
import gc
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError

_T = TypeVar("_T")

__all__ = [
    "init_from_env",
    "shutdown",
    "local_rank",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "particle_owner",
    "owned_particles",
    "resolve_distributed",
    "all_reduce_rows_",
    "broadcast_",
    "broadcast_object",
    "barrier",
    "shard_bounds",
    "all_reduce_sum_",
    "data_parallel",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: str = "auto", *, timeout: datetime.timedelta | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; this calls ``torch.distributed.init_process_group`` with them (``env://``).
    The backend follows the device: nccl for CUDA, after pinning this process to GPU
    ``LOCAL_RANK`` (so ``"cuda"`` means this rank's GPU), gloo for CPU.

    Args:
        device: the run's device setting: ``"auto"`` (CUDA when available), ``"cpu"``,
            ``"cuda"`` (an explicit ``"cuda:k"`` is overridden by ``LOCAL_RANK``).
        timeout: how long a collective may wait for the other ranks (torch's default if None).

    Returns:
        True when a group is initialised afterwards; False when not launched by torchrun.
    """
    if _initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    kind = torch.device("cuda" if device == "auto" else device).type
    if device == "auto" and not torch.cuda.is_available():
        kind = "cpu"
    if kind == "cuda":
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=timeout)
    elif kind == "cpu":
        dist.init_process_group("gloo", timeout=timeout)
    else:
        raise ConfigError(f"device={device!r} under torchrun; choose auto, cpu or cuda")
    return True


def shutdown() -> None:
    """Destroy the default process group, if one is initialised (end of a torchrun job).

    Unreachable objects that still hold the group (a DDP wrapper in a reference cycle, say)
    are collected first, while the group exists, rather than during interpreter teardown
    after it is gone, where freeing their C++ state can abort the process.
    """
    if _initialized():
        gc.collect()
        dist.destroy_process_group()


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


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


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place, in order).

    The particle engine assumes every rank starts a pruning call with the same model
    weights, masks and particle state. A pipeline that builds or fine-tunes the model on
    every rank can call this on ``model.state_dict().values()`` (and the masks) before
    pruning, so nondeterministic kernels cannot let the replicas drift apart. No-op in a
    single process.
    """
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=src)


def broadcast_object(value: _T, src: int = 0) -> _T:
    """Rank ``src``'s ``value`` (any picklable object) on every rank; ``value`` itself alone.

    Lets rank 0 tell the others what happened (e.g. that creating the run directory failed,
    and why) so that they raise the same error instead of waiting in the next collective.
    """
    if not is_distributed():
        return value
    holder: list[Any] = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process).

    Used where ranks read a file rank 0 has just written (best weights), or rank 0 must not
    replace a file the others are still reading (the checkpoint a resumed run starts from).
    """
    if is_distributed():
        dist.barrier()


def shard_bounds(num_items: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` share of ``num_items`` (no padding).

    Evaluation shards a data set this way and SUM-reduces its totals, so the result is the
    single-process figure exactly (a ``DistributedSampler`` would pad with repeated items).
    """
    world, me = world_size(), rank()
    per, extra = divmod(num_items, world)
    start = me * per + min(me, extra)
    return start, start + per + (1 if me < extra else 0)


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """SUM-all-reduce ``tensor`` in place across ranks (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when several ranks train it.

    On CUDA, BatchNorm layers become ``SyncBatchNorm`` (statistics over the global batch,
    as one process would compute them); gloo on CPU has no SyncBatchNorm, so each rank
    normalises its own share of the batch there, as plain DDP does. Without a process group
    of more than one rank the model is returned as it is.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index or 0])
    return DistributedDataParallel(model)
