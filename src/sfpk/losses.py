"""Losses by task: classification cross-entropy and next-token cross-entropy.

A data set declares its task (:attr:`sfpk.data.DataSplits.task`); the Trainer, evaluation
and the pruning calls of the pipelines take their loss from :func:`task_loss`, so the same
pruners (SNIP, GraSP, SFPK, SpODE, ...) take gradients through the right loss.

* ``"classification"``: logits ``[B, C]``, integer targets ``[B]``; the loss is
  :func:`torch.nn.functional.cross_entropy` itself (nothing changes for image data).
* ``"language_model"``: logits ``[B, T, V]``, targets ``[B, T]`` (the inputs shifted by one
  token); the loss is the cross-entropy over all ``B * T`` positions (:func:`next_token_loss`).
  Perplexity is ``exp`` of the token-weighted mean of that loss over a split.

Example:
    >>> logits = torch.zeros(2, 3, 5)  # uniform over 5 tokens
    >>> next_token_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item()  # log 5
    1.6094379425048828
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from .errors import SfpkError, check_choice

__all__ = [
    "TASKS",
    "Task",
    "LossFn",
    "next_token_loss",
    "flatten_tokens",
    "task_loss",
    "flatten_for_task",
    "perplexity",
]

Task = Literal["classification", "language_model"]
TASKS: tuple[str, ...] = typing.get_args(Task)
LossFn = Callable[..., Tensor]


def flatten_tokens(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T, V]`` logits and ``[B, T]`` targets as ``[B*T, V]`` and ``[B*T]``.

    Raises:
        SfpkError: the shapes are not those of a language model's output and targets.
    """
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[:2] != targets.shape:
        raise SfpkError(
            f"a language model must map [B, T] token ids to [B, T, V] logits; got logits "
            f"{tuple(logits.shape)} for targets {tuple(targets.shape)}"
        )
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def next_token_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Next-token cross-entropy over every position of every sequence.

    ``targets[b, t]`` is the token that follows input position ``t`` (the data set already
    shifted it), so no shifting happens here. With ``reduction="mean"`` every token weighs
    the same, whatever the batch size: the mean over ``B * T`` positions.

    Args:
        logits: ``[B, T, V]`` unnormalised scores.
        targets: ``[B, T]`` token ids in ``[0, V)``.
        reduction: ``"mean"`` (per token), ``"sum"`` or ``"none"`` (``[B*T]``).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.

    Returns:
        The loss (a scalar unless ``reduction="none"``).

    Raises:
        SfpkError: the shapes do not match ``[B, T, V]`` / ``[B, T]``.

    Example:
        >>> loss = next_token_loss(model(inputs), targets)  # doctest: +SKIP
    """
    flat_logits, flat_targets = flatten_tokens(logits, targets)
    return F.cross_entropy(
        flat_logits, flat_targets, reduction=reduction, label_smoothing=label_smoothing
    )


def task_loss(task: Task) -> LossFn:
    """The training / scoring loss of ``task``: ``loss(logits, targets, **kw) -> Tensor``.

    ``"classification"`` returns :func:`torch.nn.functional.cross_entropy` itself, so image
    runs compute exactly what they always did.

    Raises:
        UnknownNameError: ``task`` is not one of :data:`TASKS`.
    """
    check_choice("task", task, TASKS)
    if task == "classification":
        return F.cross_entropy
    if task == "language_model":
        return next_token_loss
    raise SfpkError(f"task={task!r} has no loss")  # unreachable after check_choice


def flatten_for_task(task: Task, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[N, C]`` and targets ``[N]`` with one row per prediction (per token for LMs).

    Metrics (accuracy, summed loss, counts) are then computed the same way for both tasks,
    and for language models they are token-weighted.
    """
    if task == "classification":
        return logits, targets
    if task == "language_model":
        return flatten_tokens(logits, targets)
    raise SfpkError(f"task={task!r}; choose one of {', '.join(TASKS)}")


def perplexity(mean_token_loss: float) -> float:
    """``exp(mean token loss)``; ``inf`` when it overflows."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return math.inf
