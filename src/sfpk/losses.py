"""Losses by task: classification cross-entropy, next-token cross-entropy, DDPM denoising.

A data set declares its task (:attr:`sfpk.data.DataSplits.task`); the Trainer, evaluation
and the pruning calls of the pipelines take their loss from :func:`task_loss`, so the same
pruners (SNIP, GraSP, SFPK, SpODE, ...) take gradients through the right loss.

* ``"classification"``: logits ``[B, C]``, integer targets ``[B]``; the loss is
  :func:`torch.nn.functional.cross_entropy` itself (nothing changes for image data).
* ``"language_model"``: logits ``[B, T, V]``, targets ``[B, T]`` (the inputs shifted by one
  token); the loss is the cross-entropy over all ``B * T`` positions (:func:`next_token_loss`).
  Perplexity is ``exp`` of the token-weighted mean of that loss over a split.
* ``"denoise"``: a denoiser (:class:`sfpk.models.diffusion.DenoisingModel`) maps clean
  images ``x0`` to ``[B, 2, C, H, W]``: the noise it predicts for a noised ``x0`` and the
  noise that was added; the loss is DDPM's ε-prediction MSE between the two
  (:func:`denoise_loss`). Class targets are ignored; no accuracy is defined (reported as 0).

Example:
    >>> logits = torch.zeros(2, 3, 5)  # uniform over 5 tokens
    >>> next_token_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item()  # log 5
    1.6094379425048828
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataMismatchError, SfpkError, check_choice

__all__ = [
    "TASKS",
    "Task",
    "LossFn",
    "next_token_loss",
    "denoise_loss",
    "flatten_tokens",
    "task_loss",
    "flatten_for_task",
    "perplexity",
    "check_loss_targets",
    "IGNORE_INDEX",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: targets of this value are skipped

Task = Literal["classification", "language_model", "denoise"]
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


def denoise_loss(
    output: Tensor,
    targets: Tensor | None = None,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """DDPM's ε-prediction loss: the MSE between the predicted and the added noise.

    ``output[:, 0]`` is the noise the denoiser predicts for ``x_t``, ``output[:, 1]`` the
    noise ``ε`` that made ``x_t`` from ``x0`` (:class:`sfpk.models.diffusion.DenoisingModel`
    returns both, so every pruner's ``loss_fn(model(inputs), targets)`` is this loss).

    Args:
        output: ``[B, 2, ...]``: predicted and true noise, stacked on dimension 1.
        targets: ignored (class labels of the images, if any).
        reduction: ``"mean"`` (over every element), ``"sum"`` (of the per-image means,
            so that a sum over a split divided by its images is the mean) or ``"none"``
            (``[B]`` per-image means).
        label_smoothing: ignored (accepted because the Trainer passes it to every loss).

    Raises:
        SfpkError: ``output`` is not ``[B, 2, ...]`` (a classifier's logits, say).
    """
    del targets, label_smoothing
    if not isinstance(output, Tensor) or output.dim() < 3 or output.shape[1] != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise SfpkError(
            f"the denoise loss needs a denoiser's output [B, 2, C, H, W] (predicted and true "
            f"noise), got {shape}: wrap a UNet in sfpk.models.diffusion.DenoisingModel "
            "(e.g. sfpk.models.create('unet_tiny', ...)); classifiers take task='classification'"
        )
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    per_image = (output[:, 0] - output[:, 1]).pow(2).flatten(1).mean(1)
    if reduction == "none":
        return per_image
    return per_image.sum() if reduction == "sum" else per_image.mean()


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
    if task == "denoise":
        return denoise_loss
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
    if task == "denoise":  # one row per image, never a hit: no accuracy for a denoiser
        rows = logits.shape[0]
        return logits.new_zeros(rows, 1), torch.full((rows,), -1, device=logits.device)
    raise SfpkError(f"task={task!r}; choose one of {', '.join(TASKS)}")


def perplexity(mean_token_loss: float) -> float:
    """``exp(mean token loss)``; ``inf`` when it overflows."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return math.inf


def check_loss_targets(
    output: Any,
    targets: Tensor,
    *,
    loss_fn: LossFn | None,
    inputs: Any = None,
    task: str | None = None,
    where: str = "the batch",
) -> None:
    """Refuse targets that the loss would misread or index out of range, before it runs.

    With the default loss (``loss_fn=None``, cross-entropy over dimension 1) and with
    :func:`next_token_loss`, integer targets must lie in ``[0, C)`` (``C`` the classes or
    the vocabulary; :data:`IGNORE_INDEX` is skipped): on a GPU an index out of range is a
    device-side assert that ends the process, not an error. ``[B, T, V]`` logits for
    ``[B, T]`` integer targets are a language model's, which the default loss would read
    with ``T`` as the classes: refused, naming ``loss_fn=sfpk.losses.next_token_loss``
    (``task="language_model"``, a model's ``sfpk_task``, settles the case ``T == V``).
    A denoiser (``task="denoise"``) under the default loss is refused, naming
    ``loss_fn=sfpk.losses.denoise_loss``.
    Other losses are the caller's: nothing is assumed about their targets.

    Args:
        output: the model's output on ``inputs``.
        where: the batch, in words, for the messages (with its shapes).

    Raises:
        DataMismatchError: naming the targets' range and ``C``, or the loss to pass.
    """
    if task == "denoise" and loss_fn is None:
        raise DataMismatchError(
            f"{where}: the model is a denoiser (task 'denoise'), whose output is predicted "
            "and true noise, and the default loss_fn is classification cross-entropy: pass "
            "loss_fn=sfpk.losses.denoise_loss"
        )
    if not isinstance(output, Tensor) or output.dim() == 0:
        return
    if targets.is_floating_point() or targets.is_complex():
        return  # class probabilities: cross-entropy checks their shape itself
    if loss_fn is next_token_loss:
        if output.dim() == 3 and targets.shape == output.shape[:2]:
            _check_class_range(targets, output.shape[-1], where, "tokens in the vocabulary")
            if _same_tokens(inputs, targets):
                log.warning(
                    "next_token_loss scores targets[:, t] as the token after inputs[:, t], "
                    "and the pruning data's targets equal its inputs: pass the pairs shifted "
                    "by one token, (ids[:, :-1], ids[:, 1:])"
                )
        return
    if loss_fn is not None:
        return
    tokens = output.dim() == 3 and tuple(targets.shape) == tuple(output.shape[:2])
    classes = output.dim() == 3 and tuple(targets.shape) == (output.shape[0], output.shape[2])
    if tokens and (task == "language_model" or not classes):
        same = _same_tokens(inputs, targets)
        shift = (
            "; the targets equal the inputs, and next_token_loss scores targets[:, t] as the "
            "token after inputs[:, t]: pass the pairs shifted by one, (ids[:, :-1], ids[:, 1:])"
            if same
            else ", which takes targets[:, t] as the token after inputs[:, t]"
        )
        raise DataMismatchError(
            f"{where} looks like a language model's ([B, T, V] logits for [B, T] token "
            "targets), and the default loss_fn is classification cross-entropy over dimension "
            "1; sfpk.prune does not guess whether the targets are already shifted: pass "
            f"loss_fn=sfpk.losses.next_token_loss{shift}"
        )
    fits = output.shape[:1] + output.shape[2:] if output.dim() > 1 else torch.Size([])
    if targets.shape == fits:  # else cross-entropy refuses the shapes itself
        _check_class_range(targets, output.shape[1 if output.dim() > 1 else 0], where, "classes")


def _same_tokens(inputs: Any, targets: Tensor) -> bool:
    """Whether the targets are the inputs themselves (not shifted by one token)."""
    return (
        isinstance(inputs, Tensor)
        and inputs.shape == targets.shape
        and inputs.dtype == targets.dtype
        and torch.equal(inputs, targets)
    )


def _check_class_range(targets: Tensor, classes: int, where: str, what: str) -> None:
    """Integer ``targets`` lie in ``[0, classes)``, or are :data:`IGNORE_INDEX`."""
    counted = targets[targets != IGNORE_INDEX]
    if counted.numel() == 0:
        return
    low, high = int(counted.min()), int(counted.max())
    if low >= 0 and high < classes:
        return
    bad = int(((counted < 0) | (counted >= classes)).sum())
    raise DataMismatchError(
        f"the targets of {where} hold values in [{low}, {high}], {bad} of {counted.numel()} "
        f"outside [0, {classes}): the model's output has C={classes} {what}; pass `data` "
        f"whose targets are in [0, {classes}) ({IGNORE_INDEX}: ignored), a model with as many "
        "outputs, or a `loss_fn` for these targets"
    )
