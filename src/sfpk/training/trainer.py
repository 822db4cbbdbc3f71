"""Trainer: one training epoch and one evaluation, with the pruning masks kept applied.

The loop is straight-line code (style.md §7): set lr -> forward -> loss / accumulation ->
backward -> mask gradients -> clip -> step -> re-apply masks. There is no callback framework;
the pipelines (:mod:`sfpk.pipelines`) call :meth:`Trainer.train_epoch` and
:meth:`Trainer.evaluate` once per epoch and choose the LR with :mod:`sfpk.training.schedules`.

Pruned weights stay exactly zero: their gradients are zeroed before every optimizer step
and the masks are multiplied into the weights again after it. The second half matters for
optimizers whose update is not a function of the current gradient alone (momentum buffers
filled before pruning, or any future optimizer with decoupled terms).

A phase's settings (:class:`sfpk.training.optimizers.OptimizerConfig`) and the optimizer they build
are declared in :mod:`sfpk.training.optimizers`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import ConfigError, NonFiniteError, SfpkError, check_choice
from ..losses import TASKS, Task, flatten_for_task, perplexity, task_loss
from ..masks.core import Masks
from .distributed import all_reduce_sum_, data_parallel, is_distributed
from .optimizers import OptimizerConfig, make_optimizer
from .precision import Precision, autocast, check_precision, grad_scaler

__all__ = [
    "TrainResult",
    "EvalResult",
    "Trainer",
    "select_device",
]

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss (with label smoothing) and top-1 accuracy of one epoch.

    For language models both are per token (token-weighted over the epoch).
    """

    loss: float
    acc: float


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy, top-1 and top-5 accuracy (fractions in [0, 1]) on a split.

    For language models every token counts once: ``loss`` is the token-weighted mean
    next-token loss and ``top1`` the token accuracy, whatever the batch sizes.
    """

    loss: float
    top1: float
    top5: float

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: the perplexity of a language model on the split."""
        return perplexity(self.loss)


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device (try auto, cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available; use cpu")
    return device


class Trainer:
    """Trains and evaluates ``model`` on ``device``, keeping ``masks`` applied.

    Args:
        model: the network; it is moved to ``device``. If ``masks`` is given, they are
            applied to it right away (pruned weights become zero).
        options: optimizer and loss settings; a config section (``config.train``,
            ``config.pretrain``) is one as it is.
        device: where to compute.
        masks: pruning masks to keep applied, or None for dense training.
        progress: show a tqdm bar per epoch (only when stderr is a terminal).
        task: ``"classification"`` (logits ``[B, C]``, cross-entropy) or
            ``"language_model"`` (logits ``[B, T, V]``, :func:`sfpk.losses.next_token_loss`;
            accuracy and loss are per token) or ``"denoise"`` (a
            :class:`sfpk.models.diffusion.DenoisingModel`, :func:`sfpk.losses.denoise_loss`,
            loss per image, accuracy 0). The data set declares it
            (:attr:`sfpk.data.DataSplits.task`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 with loss scaling;
            :mod:`sfpk.training.precision`). Weights, gradients and optimizer state stay fp32.
        channels_last: store 4-D conv weights and inputs channels-last (faster convs on
            GPUs and recent CPUs); no effect on other models.
        compile: train through ``torch.compile(model)``; when compiling fails the epoch
            runs uncompiled, with a warning that says why.

    Under ``torchrun`` with more than one rank the model trains as
    ``DistributedDataParallel`` (gradients averaged over ranks; give each rank its share of
    every global batch, e.g. with a ``DistributedSampler``), and ``evaluate(...,
    sharded=True)`` sums each rank's share of the evaluation data.

    Example:
        >>> trainer = Trainer(model, OptimizerConfig(), device=torch.device("cpu"))
        >>> trainer.train_epoch(loader, lr=0.01)  # doctest: +SKIP
        >>> trainer.evaluate(test_loader).top1  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        options: OptimizerConfig,
        *,
        device: torch.device,
        masks: Masks | None = None,
        progress: bool = True,
        task: Task = "classification",
        precision: Precision = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        check_choice("task", task, TASKS)
        model_task = getattr(model, "sfpk_task", None)
        if (task == "denoise") != (model_task == "denoise"):
            raise ConfigError(
                f"task={task!r} for a model whose task is {model_task or 'classification'!r}: "
                "the denoise task needs a denoiser (sfpk.models.diffusion.DenoisingModel, "
                "e.g. unet_tiny) and a denoiser trains only on task='denoise'"
            )
        self.task = task
        self.loss_fn = task_loss(task)
        self.precision = check_precision(precision, device)
        self.scaler = grad_scaler(device, precision)
        self.channels_last = channels_last
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.options = options
        self.device = device
        self.progress = progress and sys.stderr.isatty()
        self.optimizer = make_optimizer(model.parameters(), options, lr=0.0)
        params = dict(model.named_parameters())
        self._masks: list[tuple[nn.Parameter, Tensor]] = []
        if masks is not None:
            masks.check_fits(model)
            for name, mask in masks.effective_masks().items():
                param = params[name]
                self._masks.append((param, (mask != 0).to(device=device, dtype=param.dtype)))
        self._reapply_masks()
        # What the training step calls: DDP under torchrun, compiled when asked.
        self.train_model: nn.Module = data_parallel(self.model, device)
        self._compile = compile

    def _forward(self, inputs: Tensor) -> Tensor:
        """The training forward: channels-last inputs, compile on first use (or fallback)."""
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self._compile:
            self._compile = False
            compiled = torch.compile(self.train_model)
            try:
                with autocast(self.device, self.precision):
                    logits = compiled(inputs)
            except Exception as error:  # noqa: BLE001  any backend failure -> eager, said
                log.warning(
                    "torch.compile failed (%s: %s); training without it",
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
            else:
                self.train_model = compiled
                return logits
        with autocast(self.device, self.precision):
            return self.train_model(inputs)

    @torch.no_grad()
    def _reapply_masks(self) -> None:
        for param, mask in self._masks:
            param.mul_(mask)

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        for param, mask in self._masks:
            if param.grad is not None:
                param.grad.mul_(mask)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # true gradients for masking and clipping
        self._mask_gradients()
        if self.options.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled grads overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._reapply_masks()

    def train_epoch(
        self, loader: Iterable[Batch], *, lr: float, desc: str = "train"
    ) -> TrainResult:
        """Train one pass over ``loader`` at learning rate ``lr``.

        Gradient accumulation: the loss of each batch is divided by the number of batches in
        its group, so the summed gradient is the mean over the group, the same scale as one
        big batch (without it the effective LR would grow with ``grad_accum_steps``). Unlike
        the reference (spec §8.26), a trailing partial group at the end of the epoch is not
        dropped: it is stepped on, divided by its own size.

        Raises:
            NonFiniteError: the loss became NaN or infinite (checked before its backward).
        """
        self.model.train()
        self.set_lr(lr)
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.options.grad_accum_steps
        num_batches = len(loader) if isinstance(loader, Sized) else None
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=desc, leave=False, disable=not self.progress)
        for index, batch in enumerate(bar):
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
            group_start = index - index % accum
            group_size = accum if num_batches is None else min(accum, num_batches - group_start)
            stepping = index - group_start + 1 == group_size
            # DDP all-reduces gradients only on the micro-batch that ends a group.
            sync = contextlib.nullcontext()
            if not stepping and hasattr(self.train_model, "no_sync"):
                sync = self.train_model.no_sync()
            with sync:
                logits = self._forward(inputs)
                loss = self.loss_fn(
                    logits.float(), targets, label_smoothing=self.options.label_smoothing
                )
                value = loss.item()  # one device sync per batch, reused below
                if not math.isfinite(value):  # before backward: no step is taken on it
                    raise NonFiniteError(
                        f"training loss became {value} at batch {index} ({desc}): NaN or inf "
                        "in the inputs, the weights or the loss (try a lower learning rate); "
                        "no optimizer step was taken on it"
                    )
                scaled = loss / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if stepping:
                self._step()
            logits, targets = flatten_for_task(self.task, logits.detach(), targets)
            total_loss += value * len(targets)  # per token for language models
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        if self._has_pending_grads():  # an unsized iterable ended inside a group
            self._step()
        if seen == 0:
            raise SfpkError("the training data yielded no batch")
        return TrainResult(loss=total_loss / seen, acc=correct / seen)

    def _has_pending_grads(self) -> bool:
        return any(p.grad is not None for p in self.model.parameters())

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Batch], *, sharded: bool = False) -> EvalResult:
        """Mean loss, top-1 and top-5 accuracy of the model (eval mode) on ``loader``.

        Sums over items (tokens for language models) and divides once at the end, so
        batches of unequal size weigh by their size. ``sharded=True``: under torchrun each
        rank's ``loader`` holds its own share of the data (``distributed.shard_bounds``)
        and the sums are all-reduced, so every rank gets the single-process figures.
        """
        self.model.eval()
        total_loss, top1, top5, seen = 0.0, 0, 0, 0
        for batch in loader:
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
            if self.channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                logits = self.model(inputs)
            logits = logits.float()
            total_loss += self.loss_fn(logits, targets, reduction="sum").item()
            logits, targets = flatten_for_task(self.task, logits, targets)
            k = min(5, logits.shape[1])
            ranked = logits.topk(k, dim=1).indices
            hits = ranked == targets.unsqueeze(1)
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(dim=1).sum())
            seen += len(targets)
        if sharded and is_distributed():
            sums = torch.tensor([total_loss, top1, top5, seen], dtype=torch.float64)
            total_loss, top1, top5, seen = all_reduce_sum_(sums.to(self.device)).tolist()
            top1, top5, seen = int(top1), int(top5), int(seen)
        if seen == 0:
            raise SfpkError("the evaluation data yielded no batch")
        if not math.isfinite(total_loss):
            raise NonFiniteError(
                f"evaluation loss is {total_loss}: the model outputs NaN or inf "
                "(non-finite weights, or NaN/inf in the evaluation inputs)"
            )
        return EvalResult(loss=total_loss / seen, top1=top1 / seen, top5=top5 / seen)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
