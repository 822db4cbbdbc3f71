"""Every "keep the top k" decision: exact final masks and the engine's thresholds.

This is the one place where scores become 0/1 masks (pruners only score). Higher score means
keep. See :mod:`sfpk.masks.core` for the sparsity and tie-breaking conventions. The particle
engine's in-simulation thresholds (polarisation, hard vote) use
:func:`~sfpk.selection.cuts.cut` and :func:`~sfpk.selection.cuts.weighted_cut` with the
reference's tie rules (the cuts of one flat score vector live in :mod:`sfpk.selection.cuts`);
final masks use :func:`select_topk`, and :func:`check_achieved_sparsity` (below) checks them
against these counting rules.



* unstructured, ``global``: exactly ``floor(sparsity * P)`` of the ``P`` prunable weights go.
* unstructured, ``local``: exactly ``floor(sparsity * numel)`` go from every tensor.
* unstructured, ``row``: exactly ``floor(sparsity * k)`` go from every output row of ``k``
  weights (the first dim of each tensor; Wanda's comparison group).
* ``N:M``: every group of ``M`` consecutive weights along the input dimension drops its
  ``floor(sparsity * M)`` lowest, whatever the scope (at ``1 - N/M`` each keeps exactly N).
* structured, ``local``: ``floor(sparsity * C)`` of the ``C`` filters/channels of each tensor
  go, so each layer is exact up to one group.
* heads / neurons (coupled groups, :mod:`sfpk.masks.groups`): a group's score is the sum over
  its entries in every member tensor; ``local`` removes ``floor(sparsity * G)`` groups of
  every block (attention module or MLP), ``global`` ranks them as structured global does.
* structured, ``global``: groups are ranked by their score per weight (a group's score is a
  sum over the weights it controls, so raw sums would favour removing small groups) and
  removed lowest first while the removed weights stay within ``floor(sparsity * P)``
  (a group that would overshoot is skipped); the total is exact up to one group. The
  best group of every tensor is always kept, so no layer is cut off entirely.
* ``round_to=K`` (filter, channel and coupled masks): every block (a tensor's filters or
  channels, or a coupled channel group) keeps a multiple of K of its groups or all of
  them; ``local`` rounds each block's count, ``global`` removes whole chunks of K
  (:mod:`sfpk.selection.aligned`).

**The achieved-sparsity check** (:func:`check_achieved_sparsity`, run after every pruning by
:func:`sfpk.prune` and the pipelines) re-derives, from the masks alone, what :func:`select_topk`
promises: exact counts (unstructured global / local / row, N:M groups, structured local), the
within-one-group total of structured global cuts, whole coupled groups, and for masks with
``round_to`` the aligned widths (:func:`sfpk.selection.aligned.check_aligned`). So a mask file
read back, with its recorded sparsity, scope and ``round_to``, can be checked too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, SfpkError, SparsityCheckError, check_choice, check_fraction
from ..masks.core import SCOPES, Masks, Scope, removal_count
from ..masks.prunable import output_rows, parse_nm
from .aligned import (
    aligned_global_cut,
    aligned_keep_count,
    check_aligned,
    check_reachable,
    check_round_to,
    entry_groups,
    group_alive,
    is_aligned,
)
from .collapse import Guard, protected_entries
from .cuts import cut, nm_cut, structured_global_cut

__all__ = ["check_achieved_sparsity", "round_sparsity", "select_topk"]


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


def round_sparsity(sparsity: float, round_index: int, rounds: int) -> float:
    """Target of round ``k`` of ``K`` in an exponential schedule: density ``(1 - s)^((k+1)/K)``.

    Used by iterative pruning and by SynFlow's rounds; the last round lands on ``sparsity``
    exactly.
    """
    if round_index + 1 >= rounds:
        return sparsity
    return 1.0 - (1.0 - sparsity) ** ((round_index + 1) / rounds)


def select_topk(
    scores: Mapping[str, Tensor],
    template: Masks,
    *,
    sparsity: float,
    scope: Scope = "global",
    keep_pruned: bool = True,
    guard: Guard = "off",
    round_to: int | None = None,
) -> Masks:
    """Turn scores (shaped like ``template``'s masks) into 0/1 masks at ``sparsity``.

    Args:
        scores: one score tensor per mask name, in mask shape; higher means keep.
        template: the current masks; their names, shapes and structure are reused.
        sparsity: fraction of prunable weights to remove, in (0, 1).
        scope: ``"global"`` (one ranking over all tensors) or ``"local"`` (per tensor).
        keep_pruned: entries already zero in ``template`` stay zero (ranked lowest), so
            signed scores can never revive them.
        guard: the collapse guard of unstructured global/local cuts (``selection.collapse``):
            ``"row"`` keeps one weight per output row, ``"layer"`` one per tensor, ``"off"``
            (the default here; ``sfpk.prune`` guards rows by default) none. The counts stay
            exact; what it did is in the result's ``collapse_guard``.
        round_to: filter, channel and coupled masks: every block keeps a multiple of this
            many filters/channels, or all of them (:mod:`sfpk.selection.aligned`); None or 1
            (default): no rounding. Recorded in the result's ``round_to``.

    Returns:
        New :class:`Masks` with exact 0/1 values and ``target_sparsity`` set.

    Raises:
        ConfigError: a bad sparsity, scope or ``round_to``, or a ``round_to`` cut that
            cannot come near ``sparsity`` because every block at its floor removes less
            (the message gives the highest reachable). Local rounding that lands more than
            one chunk short is not refused here: that is a check of a call's final target
            (:func:`sfpk.selection.aligned.check_reachable`, made by :func:`sfpk.prune`).
    """
    check_fraction("sparsity", sparsity)
    check_choice("scope", scope, SCOPES)
    round_to = check_round_to(round_to, template.structure)
    # the local shortfall test is one of the final target, made by the callers before any
    # work (sfpk.selection.aligned): a selection at a lower target (SynFlow's inner rounds,
    # iterative rounds) only rounds
    check_reachable(template, sparsity, scope, round_to, shortfall=False)
    flat = _flat(scores, template)
    current = torch.cat([template[n].detach().reshape(-1).to("cpu") for n in template])
    if keep_pruned:
        flat = torch.where(current.to(flat.device) == 0, torch.full_like(flat, -math.inf), flat)
    sizes = [template[n].numel() for n in template]
    per_entry = [template.weights_per_entry(n) for n in template]
    nm = parse_nm(template.structure)
    report: dict[str, Any] | None = None
    if scope == "row" and template.structure != "unstructured" and nm is None:
        raise ConfigError(
            f"scope='row' compares weights within each output row and needs unstructured "
            f"masks, not structure={template.structure!r}; use global or local"
        )
    if template.coupling is not None:  # heads / neurons: one decision per group
        keep = _coupled_cut(flat, template, sparsity, scope, round_to)
    elif nm is not None:  # every group is cut on its own, whatever the scope
        keep = torch.cat(
            [
                nm_cut(chunk, template[n].shape, nm[1], sparsity)
                for n, chunk in zip(template, flat.split(sizes), strict=True)
            ]
        )
    elif scope == "row":
        keep = torch.cat(
            [
                _row_cut(chunk.reshape(output_rows(template[n].shape), -1), sparsity).reshape(-1)
                for n, chunk in zip(template, flat.split(sizes), strict=True)
            ]
        )
    elif template.structure == "unstructured":
        keep, report = _guarded_cut(flat, template, sparsity, scope, guard)
    elif is_aligned(round_to):  # filter / channel: whole filters, biases following them
        index, blocks, weights = entry_groups(template)
        budget = removal_count(template.total_weights(), sparsity)
        keep = _grouped_cut(flat, index, blocks, weights, budget, sparsity, scope, round_to)
    elif scope == "local":  # structured: every layer keeps ceil((1 - s) C) >= 1 groups
        keep = _local_cut(flat, sizes, sparsity, round_to)
    else:
        weights = torch.cat(
            [
                torch.full((s,), w, dtype=torch.float64)
                for s, w in zip(sizes, per_entry, strict=True)
            ]
        ).to(flat.device)
        budget = removal_count(template.total_weights(), sparsity)
        keep = _global_cut(flat, weights, sizes, budget, round_to)
    if keep_pruned:
        # When the template already removes more than ``sparsity`` asks for, the ranking
        # alone would revive some of its zeros; they must stay pruned.
        keep = keep * (current.to(keep.device) != 0).to(keep.dtype)
    tensors = {
        n: piece.reshape(template[n].shape).to(device=template[n].device, dtype=template[n].dtype)
        for n, piece in zip(template, keep.split(sizes), strict=True)
    }
    return template.with_tensors(
        tensors, target_sparsity=sparsity, scope=scope, collapse_guard=report, round_to=round_to
    )


def _global_cut(
    values: Tensor, weights: Tensor, sizes: list[int], budget: int, round_to: int | None
) -> Tensor:
    """The structured global cut of groups ``values``: plain, or aligned to ``round_to``."""
    if is_aligned(round_to):
        assert round_to is not None
        return aligned_global_cut(values, weights, sizes, budget, round_to)
    return structured_global_cut(values, weights, sizes, budget)


def _local_cut(flat: Tensor, sizes: list[int], sparsity: float, round_to: int | None) -> Tensor:
    """Per block of ``sizes`` groups, the exact cut of ``floor(sparsity * G)`` groups, or of
    what :func:`sfpk.selection.aligned.aligned_keep_count` leaves to go."""
    if not is_aligned(round_to):
        return _plain_cut(flat, sizes, sparsity, "local")
    assert round_to is not None
    return torch.cat(
        [
            cut(chunk, chunk.numel() - aligned_keep_count(chunk.numel(), sparsity, round_to))
            for chunk in flat.split(sizes)
        ]
    )


def _group_index(template: Masks) -> Tensor:
    """For every flat mask entry of a coupled ``template``, the index of its group."""
    assert template.coupling is not None
    owners = template.coupling.entry_groups(template.shapes)
    return torch.cat([owners[n] for n in template])


def _coupled_cut(
    flat: Tensor, template: Masks, sparsity: float, scope: Scope, round_to: int | None
) -> Tensor:
    """Heads / neurons / channel groups: a group's score is the sum over its entries;
    ``local`` removes ``floor(sparsity * G)`` groups of every block, ``global`` ranks groups
    by score per weight as for filters (both aligned to ``round_to`` when it is > 1).
    Every entry of a group gets the group's decision."""
    coupling = template.coupling
    assert coupling is not None
    weights = coupling.group_weights(template.shapes)
    budget = removal_count(template.total_weights(), sparsity)
    index, sizes = _group_index(template), coupling.block_sizes()
    return _grouped_cut(flat, index, sizes, weights, budget, sparsity, scope, round_to)


def _grouped_cut(
    flat: Tensor,
    index: Tensor,
    sizes: list[int],
    weights: Tensor,
    budget: int,
    sparsity: float,
    scope: Scope,
    round_to: int | None,
) -> Tensor:
    """Entries ``flat`` summed into the groups ``index`` names (blocks of ``sizes``, group
    ``weights``), cut per block (local) or within ``budget`` weights (global); every entry
    gets its group's decision."""
    index = index.to(flat.device)
    groups = torch.zeros(len(weights), dtype=flat.dtype, device=flat.device)
    groups.index_add_(0, index, flat)
    if scope == "local":
        keep = _local_cut(groups, sizes, sparsity, round_to)
    else:
        keep = _global_cut(groups, weights.to(flat.device), sizes, budget, round_to)
    return keep[index]


def _plain_cut(flat: Tensor, sizes: list[int], sparsity: float, scope: Scope) -> Tensor:
    """The plain exact cut of entries: one over everything (global) or one per tensor
    (local); for structured masks only the per-tensor form is used."""
    if scope == "local":
        return torch.cat([cut(c, removal_count(c.numel(), sparsity)) for c in flat.split(sizes)])
    return cut(flat, removal_count(flat.numel(), sparsity))


def _guarded_cut(
    flat: Tensor, template: Masks, sparsity: float, scope: Scope, guard: Guard
) -> tuple[Tensor, dict[str, Any]]:
    """:func:`_plain_cut` with the collapse guard, and the guard's report.

    The report is ``{"requested", "mode", "rescued": {mask name: entries kept only by the
    guard}}``; ``mode`` is weaker than ``requested`` when the kept budget is too small.
    """
    sizes = [template[n].numel() for n in template]
    keep = _plain_cut(flat, sizes, sparsity, scope)
    if scope == "local":
        kept = [s - removal_count(s, sparsity) for s in sizes]
    else:
        kept = [flat.numel() - removal_count(flat.numel(), sparsity)]
    shapes = [tuple(template[n].shape) for n in template]
    protect, mode = protected_entries(flat, shapes, kept, guard)
    rescued = protect[keep[protect] == 0]
    report: dict[str, Any] = {"requested": guard, "mode": mode, "rescued": {}}
    if rescued.numel() == 0:
        return keep, report
    boosted = flat.clone()
    boosted[protect] = math.inf
    bounds = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    layer = torch.bucketize(rescued.cpu(), bounds[1:], right=True)
    names = list(template)
    for index, count in zip(*torch.unique(layer, return_counts=True), strict=True):
        report["rescued"][names[int(index)]] = int(count)
    return _plain_cut(boosted, sizes, sparsity, scope), report


def _row_cut(values: Tensor, sparsity: float) -> Tensor:
    """Per row of ``[rows, cols]``, drop the ``floor(sparsity * cols)`` lowest (stable ties)."""
    remove = removal_count(values.shape[1], sparsity)
    keep = torch.ones_like(values)
    if remove > 0:
        order = torch.sort(values, dim=1, stable=True).indices[:, :remove]
        keep.scatter_(1, order, 0.0)
    return keep


def _check_coupled(masks: Masks, sparsity: float, scope: Scope) -> None:
    """Every group is kept or removed whole; per block (local) or overall (global) counts."""
    coupling = masks.coupling
    assert coupling is not None
    alive = group_alive(masks).to(torch.float64)
    if scope == "local":
        for block, keep in zip(coupling.blocks, alive.split(coupling.block_sizes()), strict=True):
            expected = block.groups - removal_count(block.groups, sparsity)
            if int(keep.sum()) != expected:
                raise SparsityCheckError(
                    f"block {block.name!r} keeps {int(keep.sum())} of {block.groups} "
                    f"{block.kind}s, expected {expected} (sparsity {sparsity})"
                )
        return
    weights = coupling.group_weights(masks.shapes)
    total, budget = masks.total_weights(), removal_count(masks.total_weights(), sparsity)
    removed = total - int((weights * alive).sum())
    if not budget - int(weights.max()) < removed <= budget:
        raise SparsityCheckError(
            f"removed {removed} of {total} weights, expected {budget} up to one group of "
            f"{int(weights.max())} (sparsity {sparsity})"
        )


def _check_nm(masks: Masks, m: int, sparsity: float) -> None:
    """Every group of ``m`` along dim 1 keeps exactly ``m - floor(sparsity * m)``."""
    expected = m - removal_count(m, sparsity)
    for name, mask in masks.items():
        kept = (mask != 0).movedim(1, -1).reshape(-1, m).sum(1)
        if bool((kept != expected).any()):
            raise SparsityCheckError(
                f"layer {name!r}: a group of {m} keeps {int(kept.min())}..{int(kept.max())} "
                f"weights, expected {expected} in every group (sparsity {sparsity})"
            )


def check_achieved_sparsity(masks: Masks, sparsity: float, scope: Scope) -> None:
    """Assert the achieved sparsity, global and per layer, matches the selection rules.

    Masks with ``round_to`` > 1 are checked by :func:`sfpk.selection.aligned.check_aligned`:
    every block keeps a multiple of ``round_to`` groups or all, and the counts of ``scope``.

    Raises:
        SparsityCheckError: naming the layer (or the whole set) and both figures.
    """
    if is_aligned(masks.round_to):
        check_aligned(masks, sparsity, scope)
        return
    total = masks.total_weights()
    removed = total - masks.kept_weights()
    nm = parse_nm(masks.structure)
    if masks.coupling is not None:
        _check_coupled(masks, sparsity, scope)
        return
    if nm is not None:
        _check_nm(masks, nm[1], sparsity)
        return
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
        if scope == "row":
            rows = masks[name].reshape(output_rows(masks[name].shape), -1)
            cols = rows.shape[1]
            kept_rows = torch.count_nonzero(rows, dim=1)
            expected_row = cols - removal_count(cols, sparsity)
            if bool((kept_rows != expected_row).any()):
                raise SparsityCheckError(
                    f"layer {name!r}: a row keeps {int(kept_rows.min())}..."
                    f"{int(kept_rows.max())} of {cols} entries, expected {expected_row} in "
                    f"every row (sparsity {sparsity})"
                )
            continue
        size = masks[name].numel()
        kept = int(torch.count_nonzero(masks[name]))
        expected_kept = size - removal_count(size, sparsity)
        if kept != expected_kept:
            raise SparsityCheckError(
                f"layer {name!r} keeps {kept} of {size} mask entries, expected {expected_kept} "
                f"(sparsity {sparsity})"
            )
