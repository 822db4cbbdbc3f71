"""One-shot score pruners: rand, mag, snip, grasp, and synflow (iterative rounds).

Each returns scores in mask shape; a structured mask gets the sum of its entries' element-wise
scores (SNIP instead differentiates the structured mask itself, method spec §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError, SfpkError, check_positive
from ..masks.core import Masks, reduce_to_mask
from .base import Batch, PruneContext, ScorePruner, register, take_batches, to_device

__all__ = ["RandomPruner", "MagnitudePruner", "SnipPruner", "GraspPruner", "SynFlowPruner"]


def _check_batches(value: int | None) -> None:
    if value is not None:
        check_positive("batches", value)


def _prunable(model: nn.Module, masks: Masks) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in masks.effective_masks()}


@register
class RandomPruner(ScorePruner):
    """Random pruning: a signed N(0, 1) score per mask entry (reference ``Randn``/``Rand``)."""

    name = "rand"
    needs_data = False

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        return {
            n: torch.randn(m.shape, generator=ctx.generator, dtype=torch.float64).to(m.device)
            for n, m in masks.items()
        }


@register
class MagnitudePruner(ScorePruner):
    """Magnitude pruning: ``|theta|`` (structured: summed over the group)."""

    name = "mag"
    needs_data = False

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        params = dict(model.named_parameters())
        return {n: reduce_to_mask(params[n].detach().abs(), m.shape) for n, m in masks.items()}


@register
class SnipPruner(ScorePruner):
    """SNIP (Lee et al. 2019), eq. 6: ``|sum_b dL_b/dm|``, normalised to sum 1."""

    name = "snip"

    @dataclass(frozen=True)
    class Options:
        """Args:
        batches: how many batches of the pruning data to read (None: one full pass,
            as the reference does). Default 10.
        train_mode: score with the model in train mode (BatchNorm batch statistics), as the
            reference does.
        """

        batches: int | None = 10
        train_mode: bool = True

        def __post_init__(self) -> None:
            _check_batches(self.batches)

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        model.train(self.options.train_mode)
        params = _prunable(model, masks)
        leaves = {n: m.detach().clone().requires_grad_(True) for n, m in masks.items()}
        effective = {n: params[n].detach() * m for n, m in masks.effective_masks().items()}
        total = {n: torch.zeros_like(m) for n, m in leaves.items()}
        read = 0
        for batch in take_batches(data, self.options.batches):
            read += 1
            inputs, targets = to_device(batch, ctx.device)
            # Rebuild w * m per batch so each backward gets a fresh graph.
            weights = {**effective, **{n: params[n].detach() * leaves[n] for n in leaves}}
            loss = ctx.loss_fn(functional_call(model, weights, (inputs,), strict=False), targets)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            for n, g in zip(leaves, grads, strict=True):
                total[n] += g
        if read == 0:
            raise SfpkError("snip: the pruning data yielded no batch")
        scores = {n: g.abs() for n, g in total.items()}
        norm = sum(s.sum() for s in scores.values())
        return {n: s / norm for n, s in scores.items()}


@register
class GraspPruner(ScorePruner):
    """GraSP (Wang et al. 2020), eq. 8: ``theta * Hg`` with temperature T, normalised.

    Keeping the largest ``theta * Hg`` is the paper's "remove the largest -theta * Hg".
    """

    name = "grasp"

    @dataclass(frozen=True)
    class Options:
        """Args:
        batches: batches per pass (two passes are made); None = the whole data. Default 10.
        temperature: logits are divided by it (the paper's T = 200).
        train_mode: score with the model in train mode, as the reference does.
        """

        batches: int | None = 10
        temperature: float = 200.0
        train_mode: bool = True

        def __post_init__(self) -> None:
            _check_batches(self.batches)
            check_positive("temperature", self.temperature)

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        model.train(self.options.train_mode)
        temperature = self.options.temperature
        batches = take_batches(data, self.options.batches)
        mask_of = masks.effective_masks()
        leaves = {
            n: p.detach().clone().requires_grad_(True) for n, p in _prunable(model, masks).items()
        }

        def loss_at(batch: Batch) -> Tensor:
            inputs, targets = to_device(batch, ctx.device)
            weights = {n: leaves[n] * mask_of[n] for n in leaves}
            logits = functional_call(model, weights, (inputs,), strict=False) / temperature
            return ctx.loss_fn(logits, targets)

        stopped = {n: torch.zeros_like(p) for n, p in leaves.items()}
        seen = [0, 0]  # batches read by each of the two passes
        for batch in batches:
            seen[0] += 1
            grads = torch.autograd.grad(loss_at(batch), list(leaves.values()))
            for n, g in zip(leaves, grads, strict=True):
                stopped[n] += g
        hessian_grad = {n: torch.zeros_like(p) for n, p in leaves.items()}
        for batch in batches:
            seen[1] += 1
            grads = torch.autograd.grad(loss_at(batch), list(leaves.values()), create_graph=True)
            product = sum((g * stopped[n]).sum() for n, g in zip(leaves, grads, strict=True))
            for n, h in zip(
                leaves, torch.autograd.grad(product, list(leaves.values())), strict=True
            ):
                hessian_grad[n] += h
        if seen[0] == 0 or seen[1] != seen[0]:
            # A one-shot iterator (with batches=None) is empty the second time: Hg would be
            # zero and every score 0, a silently arbitrary mask.
            raise SfpkError(
                f"grasp reads the pruning data twice; the passes gave {seen[0]} and {seen[1]} "
                "batches (pass a re-iterable such as a list or DataLoader)"
            )
        element = {n: leaves[n].detach() * hessian_grad[n] for n in masks}
        norm = sum(s.sum() for s in element.values()).abs() + 1e-10
        return {n: reduce_to_mask(s / norm, masks[n].shape) for n, s in element.items()}


@register
class SynFlowPruner(ScorePruner):
    """SynFlow (Tanaka et al. 2020), eq. 2, with its iterative exponential schedule.

    Every round replaces the model's state by its absolute value, forwards one all-ones
    input, and scores ``|dR/dtheta * theta|`` with R the summed output; round k of K keeps
    density ``d^((k+1)/K)`` (d the final density), re-scoring the masked network each time.
    Nothing is evaluated between rounds.
    """

    name = "synflow"
    needs_data = False

    @dataclass(frozen=True)
    class Options:
        """Args:
        rounds: number of scoring rounds (the paper's 100).
        train_mode: score in train mode (the reference) instead of eval mode (the paper).
        float64: compute in double precision, so the products of many absolute weights
            do not overflow in deep networks.
        """

        rounds: int = 100
        train_mode: bool = False
        float64: bool = True

        def __post_init__(self) -> None:
            check_positive("rounds", self.rounds)

    def rounds(self) -> int:  # noqa: D102
        return self.options.rounds

    def setup(self, model: nn.Module, data, ctx: PruneContext) -> tuple[dict[str, Tensor], Tensor]:
        """``|state|`` in the compute dtype and the all-ones input; the same every round."""
        first = next(iter(islice(iter(data), 1)), None)
        if first is None:
            raise ConfigError("synflow needs one batch of data to learn the input shape")
        dtype = torch.float64 if self.options.float64 else next(model.parameters()).dtype
        state = {
            n: t.detach().abs().to(dtype) if t.is_floating_point() else t
            for n, t in [*model.named_parameters(), *model.named_buffers()]
        }
        ones = torch.ones((1, *first[0].shape[1:]), dtype=dtype, device=ctx.device)
        return state, ones

    def score(self, model, data, masks, ctx, prepared=None):  # noqa: D102
        state, ones = prepared if prepared is not None else self.setup(model, data, ctx)
        model.train(self.options.train_mode)
        mask_of = masks.effective_masks()
        leaves = {n: state[n].clone().requires_grad_(True) for n in mask_of}
        weights = {n: leaves[n] * mask_of[n].to(ones.dtype) for n in leaves}
        try:
            output = functional_call(model, {**state, **weights}, (ones,), strict=False)
        except (RuntimeError, TypeError) as exc:  # e.g. an embedding lookup of a float input
            raise ConfigError(
                f"synflow feeds an all-ones {ones.dtype} input shaped like one input of the "
                f"data, {list(ones.shape)}, and this model cannot take it "
                f"({str(exc).splitlines()[0][:120]}): pass `data` whose inputs the model takes; "
                "models of token ids need to accept a float input (the zoo and hf: language "
                "models do) or another method"
            ) from exc
        grads = torch.autograd.grad(output.sum(), [leaves[n] for n in masks])
        return {
            n: reduce_to_mask((g * leaves[n].detach()).abs(), masks[n].shape)
            for n, g in zip(masks, grads, strict=True)
        }
