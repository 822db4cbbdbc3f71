"""Top-k selection from scores: exact kept counts, global or per-layer scope, and the check.

This is the one place where scores become 0/1 masks (pruners only score). Higher score means
keep. See :mod:`sfpk.masks` for the sparsity and tie-breaking conventions.

Counting rules:

* unstructured, ``global``: exactly ``floor(sparsity * P)`` of the ``P`` prunable weights go.
* unstructured, ``local``: exactly ``floor(sparsity * numel)`` go from every tensor.
* structured, ``local``: ``floor(sparsity * C)`` of the ``C`` filters/channels of each tensor
  go, so each layer is exact up to one group.
* structured, ``global``: groups are ranked by their score per weight (a group's score is a
  sum over the weights it controls, so raw sums would favour removing small groups) and
  removed lowest first while the removed weights stay within ``floor(sparsity * P)``
  (a group that would overshoot is skipped); the total is exact up to one group. The
  best group of every tensor is always kept, so no layer is cut off entirely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import ConfigError, SfpkError, check_choice, check_fraction
from .masks import SCOPES, Masks, Scope, removal_count

__all__ = ["select_topk", "check_achieved_sparsity", "SparsityCheckError"]


class SparsityCheckError(SfpkError):
    """The achieved sparsity after pruning differs from the requested one."""


def _flat(scores: Mapping[str, Tensor], template: Masks) -> Tensor:
    stray = sorted(set(scores) - set(template))
    if stray:
        raise ConfigError(f"scores given for parameters without a mask: {stray[:5]}")
    for name in template:
        if name not in scores:
            raise ConfigError(f"no score for prunable parameter {name!r}")
        if tuple(scores[name].shape) != tuple(template[name].shape):
            raise ConfigError(
                f"score for {name!r} has shape {tuple(scores[name].shape)}, "
                f"expected the mask shape {tuple(template[name].shape)}"
            )
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64) for n in template])
    if torch.isnan(flat).any():
        raise SfpkError("pruning scores contain NaN; the model or data produce invalid gradients")
    return flat


def _keep_vector(values: Tensor, remove: int) -> Tensor:
    """0/1 vector keeping all but the ``remove`` lowest values (stable: lower index goes first).

    The ``remove``-th smallest value is found with ``kthvalue`` instead of a full stable sort
    (several times faster on the 10-25 M weights of ImageNet models); everything below it
    goes, then the ties at it in index order, which is exactly what a stable sort removes.
    """
    keep = torch.ones_like(values)
    if remove <= 0:
        return keep
    if remove >= values.numel():
        return torch.zeros_like(values)
    threshold = torch.kthvalue(values, remove).values
    below = values < threshold
    keep[below] = 0.0
    ties = torch.nonzero(values == threshold).reshape(-1)
    keep[ties[: remove - int(below.sum())]] = 0.0
    return keep


def select_topk(
    scores: Mapping[str, Tensor],
    template: Masks,
    *,
    sparsity: float,
    scope: Scope = "global",
    keep_pruned: bool = True,
) -> Masks:
    """Turn scores (shaped like ``template``'s masks) into 0/1 masks at ``sparsity``.

    Args:
        scores: one score tensor per mask name, in mask shape; higher means keep.
        template: the current masks; their names, shapes and structure are reused.
        sparsity: fraction of prunable weights to remove, in (0, 1).
        scope: ``"global"`` (one ranking over all tensors) or ``"local"`` (per tensor).
        keep_pruned: entries already zero in ``template`` stay zero (ranked lowest), so
            signed scores can never revive them.

    Returns:
        New :class:`Masks` with exact 0/1 values and ``target_sparsity`` set.
    """
    check_fraction("sparsity", sparsity)
    check_choice("scope", scope, SCOPES)
    flat = _flat(scores, template)
    current = torch.cat([template[n].detach().reshape(-1).to("cpu") for n in template])
    if keep_pruned:
        flat = torch.where(current.to(flat.device) == 0, torch.full_like(flat, -math.inf), flat)
    sizes = [template[n].numel() for n in template]
    per_entry = [template.weights_per_entry(n) for n in template]
    if scope == "local":
        pieces = [
            _keep_vector(chunk, removal_count(chunk.numel(), sparsity))
            for chunk in flat.split(sizes)
        ]
        keep = torch.cat(pieces)
    elif template.structure == "unstructured":
        keep = _keep_vector(flat, removal_count(flat.numel(), sparsity))
    else:
        weights = torch.cat(
            [
                torch.full((s,), w, dtype=torch.float64)
                for s, w in zip(sizes, per_entry, strict=True)
            ]
        ).to(flat.device)
        budget = removal_count(template.total_weights(), sparsity)
        per_weight = flat / weights
        order = torch.sort(per_weight, stable=True).indices
        # Never remove every group of a tensor: that disconnects the network.
        best = torch.stack(
            [
                chunk.argmax() + start
                for chunk, start in zip(per_weight.split(sizes), _starts(sizes), strict=True)
            ]
        )
        order = order[~torch.isin(order, best)]
        keep = torch.ones_like(flat)
        keep[_greedy_removal(order, weights, budget)] = 0.0
    if keep_pruned:
        # When the template already removes more than ``sparsity`` asks for, the ranking
        # alone would revive some of its zeros; they must stay pruned.
        keep = keep * (current.to(keep.device) != 0).to(keep.dtype)
    tensors = {
        n: piece.reshape(template[n].shape).to(device=template[n].device, dtype=template[n].dtype)
        for n, piece in zip(template, keep.split(sizes), strict=True)
    }
    return template.with_tensors(tensors, target_sparsity=sparsity, scope=scope)


def _starts(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _greedy_removal(order: Tensor, weights: Tensor, budget: int) -> Tensor:
    """Indices to remove: lowest first, skipping groups that would overshoot ``budget``."""
    if order.numel() == 0:  # every tensor has a single group, which is always kept
        return order
    sizes = weights[order]
    prefix = int((torch.cumsum(sizes, 0) <= budget).sum())
    chosen = [order[:prefix]]
    left = budget - int(sizes[:prefix].sum())
    smallest = int(sizes.min())
    extra = []
    for index, size in zip(order[prefix:].tolist(), sizes[prefix:].tolist(), strict=True):
        if left < smallest:
            break
        if size <= left:
            extra.append(index)
            left -= int(size)
    chosen.append(torch.tensor(extra, dtype=order.dtype, device=order.device))
    return torch.cat(chosen)


def check_achieved_sparsity(masks: Masks, sparsity: float, scope: Scope) -> None:
    """Assert the achieved sparsity, global and per layer, matches the selection rules.

    Raises:
        SparsityCheckError: naming the layer (or the whole set) and both figures.
    """
    total = masks.total_weights()
    removed = total - masks.kept_weights()
    if masks.structure == "unstructured" and scope == "global":
        expected = removal_count(total, sparsity)
        if removed != expected:
            raise SparsityCheckError(
                f"removed {removed} of {total} weights, expected exactly {expected} "
                f"(sparsity {sparsity})"
            )
        return
    if scope == "global":
        budget = removal_count(total, sparsity)
        largest_group = max(masks.weights_per_entry(n) for n in masks)
        if not budget - largest_group < removed <= budget:
            raise SparsityCheckError(
                f"removed {removed} of {total} weights, expected {budget} up to one group "
                f"of {largest_group} (sparsity {sparsity})"
            )
        return
    for name in masks:
        size = masks[name].numel()
        kept = int(torch.count_nonzero(masks[name]))
        expected_kept = size - removal_count(size, sparsity)
        if kept != expected_kept:
            raise SparsityCheckError(
                f"layer {name!r} keeps {kept} of {size} mask entries, expected {expected_kept} "
                f"(sparsity {sparsity})"
            )
