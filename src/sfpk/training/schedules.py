"""Learning-rate schedules as pure functions of the epoch (method spec §5.4).

Every function maps a 0-based epoch ``e`` (the LR used while training epoch ``e``) to a
float and has no state, so a resumed run recomputes exactly the LR it would have used. The
Trainer sets the LR once per epoch, as the reference does with ``scheduler.step()`` per epoch.

Choice about ``fixed_lr_epochs`` (spec §8.25): the reference holds the last cosine value,
which in one-shot fine-tuning is ``lr_min = 1e-8``, so those epochs barely train. sfpk keeps
the shape (cosine down to a floor over ``epochs - fixed_lr_epochs`` epochs, then held), but
when ``fixed_lr_epochs > 0`` and no ``lr_min`` is given the floor is ``0.1 * lr``: the held
epochs then train at a useful constant LR. With ``fixed_lr_epochs = 0`` (every recipe) the
schedule is exactly the reference's. See :func:`resolve_lr_min`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

__all__ = [
    "ONESHOT_LR_MIN",
    "PRETRAIN_LR_MIN",
    "cosine",
    "resolve_lr_min",
    "oneshot_lr",
    "finetune_lr",
    "round_lr",
    "pretrain_lr",
    "per_round",
    "REFERENCE_ROUND_EPOCHS",
    "REFERENCE_ROUND_LR_END",
    "resample",
]

ONESHOT_LR_MIN = 1e-8  # the reference's one-shot cosine floor (§5.4)
PRETRAIN_LR_MIN = 1e-6  # CosineAnnealingLR(eta_min=1e-6) of the reference pretraining (§5.1)


def cosine(epoch: int, *, start: float, end: float, epochs: int) -> float:
    """Half-cosine from ``start`` (epoch 0) to ``end`` (epoch ``epochs``), held afterwards.

    The same values as ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs,
    eta_min=end)`` stepped once per epoch, without its recursion.
    """
    if epoch >= epochs:
        return end
    return end + (start - end) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def resolve_lr_min(
    lr: float,
    lr_min: float | None,
    *,
    fixed_lr_epochs: int,
    phase: Literal["oneshot", "iterative"],
) -> float:
    """The cosine floor of a final fine-tuning phase.

    Args:
        lr: peak LR.
        lr_min: the user's floor, or None for the default.
        fixed_lr_epochs: epochs held at the floor at the end.
        phase: ``"oneshot"`` (reference floor 1e-8) or ``"iterative"`` (``0.1 * lr``).

    Returns:
        ``lr_min`` if given; else ``0.1 * lr`` for iterative runs and for one-shot runs with
        fixed-LR epochs (so they train at a useful LR), else 1e-8.
    """
    if lr_min is not None:
        return lr_min
    if phase == "iterative" or fixed_lr_epochs > 0:
        return 0.1 * lr
    if phase == "oneshot":
        return ONESHOT_LR_MIN
    raise ValueError(f"phase={phase!r} must be 'oneshot' or 'iterative'")


def oneshot_lr(
    epoch: int,
    *,
    lr: float,
    lr_min: float,
    epochs: int,
    fixed_lr_epochs: int = 0,
    warmup_epochs: int = 0,
    cold_start_lr: float = 1e-4,
) -> float:
    """One-shot fine-tuning LR: linear warm-up, cosine to ``lr_min``, then held (§5.4).

    With ``T = epochs - fixed_lr_epochs`` and ``W = warmup_epochs``:
    ``lr_e = c + (lr - c) e / W`` for ``e <= W``; ``lr_min + (lr - lr_min)(1 + cos(pi (e - W)
    / (T - W))) / 2`` for ``W < e <= T``; ``lr_T = lr_min`` for ``e > T``.
    """
    total = epochs - fixed_lr_epochs
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return cold_start_lr + (lr - cold_start_lr) * epoch / warmup_epochs
    return cosine(epoch - warmup_epochs, start=lr, end=lr_min, epochs=total - warmup_epochs)


def finetune_lr(
    epoch: int, *, lr: float, lr_min: float, epochs: int, fixed_lr_epochs: int = 0
) -> float:
    """Iterative final-phase LR: cosine from ``lr`` to ``lr_min`` over ``epochs -
    fixed_lr_epochs`` epochs, then held; no warm-up (as in the reference, §5.3)."""
    return cosine(epoch, start=lr, end=lr_min, epochs=epochs - fixed_lr_epochs)


def round_lr(epoch: int, *, start: float, end: float, epochs: int) -> float:
    """LR of the fine-tuning after iterative round k: cosine ``itr_lr[k] -> itr_lr_end[k]``."""
    return cosine(epoch, start=start, end=end, epochs=epochs)


def pretrain_lr(epoch: int, *, lr: float, epochs: int, lr_min: float = PRETRAIN_LR_MIN) -> float:
    """Dense pretraining LR: cosine from ``lr`` to ``lr_min`` (1e-6) over ``epochs`` (§5.1)."""
    return cosine(epoch, start=lr, end=lr_min, epochs=epochs)


def per_round(values: Sequence[float], round_index: int) -> float:
    """Entry ``round_index`` of a per-round list, or its single entry for every round."""
    return values[0] if len(values) == 1 else values[round_index]


# The reference's fine-tuning schedule between its 10 iterative rounds (tune_per_prn and
# itr_lr_end of its README recipes): epochs and the cosine's end LR after rounds 1..9.
REFERENCE_ROUND_EPOCHS: tuple[int, ...] = (3, 4, 5, 10, 15, 15, 20, 20, 30)
REFERENCE_ROUND_LR_END: tuple[float, ...] = (5e-4, 2e-4) + (1e-4,) * 7


def resample(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` entries of ``values`` at evenly spaced positions, first and last included
    (a single entry: the first); the values themselves when ``count == len(values)``."""
    if count == 1:
        return [values[0]]
    last = len(values) - 1
    return [values[round(i * last / (count - 1))] for i in range(count)]
