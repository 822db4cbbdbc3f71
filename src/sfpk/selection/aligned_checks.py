"""The checks of ``round_to`` cuts (:mod:`sfpk.selection.aligned`): the reach rule before pruning,
the alignment of starting masks, and the alignment and counts of finished masks.

**Reach.** Every block at its floor (K groups, or all) removes ``R`` weights, the most any
cut can. A sparsity whose budget ``floor(sparsity * P)`` exceeds ``R`` is out of reach in
both scopes. Under ``local`` scope the rounded counts must also remove more than the budget
less one chunk of the largest block (``min(K, G - K)`` groups); rounding every block to its
nearer width can otherwise remove far less than asked (or nothing). This second test is not
monotone in the sparsity (it can pass at 0.3 and fail at 0.21), so it is a check of the
*final* target of a call, made before any work (:func:`check_reachable` with
``shortfall=True``: :func:`sfpk.prune`, :func:`sfpk.api.check_pruning`, the pipelines' dry
run). Lower targets on the way to it (SynFlow's inner rounds, the pipelines' iterative
rounds) are only rounded: the first test alone applies to them, and it holds for every
target below an accepted one. The checks of finished masks (:func:`check_aligned`) verify
the counts of the rule, not the shortfall.

The error of the first test says "at most X" with X the highest sparsity the scope accepts
(:func:`max_sparsity`, rounded down to 4 decimals, so asking for X is accepted): ``R / P``
under global scope; under local scope the highest sparsity on the 0.0001 grid whose
rounding also passes the second test. It names the largest divisor of K, down to 1 (no
rounding), that reaches the target. Entries already pruned (iterative rounds,
``keep_pruned``) score ``-inf`` and form the lowest chunks, so starting masks whose zeros
stay must be aligned the same way (:func:`check_aligned_start`); starting masks aligned to a
multiple of K are aligned to K.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, SparsityCheckError, check_choice
from ..masks.core import Masks, removal_count
from .aligned_blocks import (
    AlignedBlock,
    aligned_blocks,
    aligned_keep_count,
    bias_followers,
    block_kept,
    check_round_to,
    is_aligned,
)

__all__ = [
    "check_aligned",
    "check_aligned_start",
    "check_local_start",
    "check_reachable",
    "max_sparsity",
]


def _largest_chunk(blocks: list[AlignedBlock], round_to: int) -> int:
    """Weights of the largest removable chunk of any block (0: no block can shrink)."""
    return max((max(0, min(round_to, b.groups - round_to)) * b.weight for b in blocks), default=0)


def _removable(blocks: list[AlignedBlock], round_to: int) -> int:
    """Weights that go when every block keeps only its floor: ``round_to`` groups, or all
    of them when it has at most ``round_to`` (``round_to=1``: the plain structured cut,
    which keeps the best group of every block)."""
    return sum(max(0, b.groups - round_to) * b.weight for b in blocks)


def _local_removed(blocks: list[AlignedBlock], sparsity: float, round_to: int) -> int:
    """Weights the local rounded counts of :func:`aligned_keep_count` remove."""
    if round_to <= 1:
        return sum(removal_count(b.groups, sparsity) * b.weight for b in blocks)
    return sum((b.groups - aligned_keep_count(b.groups, sparsity, round_to)) * b.weight
               for b in blocks)  # fmt: skip


def _reachable(blocks: list[AlignedBlock], budget: int, scope: str, sparsity: float,
               round_to: int, *, shortfall: bool = True) -> bool:  # fmt: skip
    """The reach rule (module docstring): the budget fits in what removing every removable
    chunk removes, and (``shortfall``, local scope) the rounded counts also remove more
    than the budget less one chunk of the largest block. ``round_to=1`` (the plain cuts,
    which accept any sparsity) is judged by the first condition alone."""
    if budget > _removable(blocks, round_to):
        return False
    if not shortfall or scope == "global" or round_to <= 1:
        return True
    tolerance = max(_largest_chunk(blocks, round_to), 1)
    return _local_removed(blocks, sparsity, round_to) > budget - tolerance


def _floor4(fraction: float) -> str:
    """``fraction`` rounded down to 4 decimals: the printed maximum is itself accepted."""
    return f"{math.floor(fraction * 10**4 + 1e-9) / 10**4:.4f}"


def _hint(blocks: list[AlignedBlock], budget: int, scope: str, sparsity: float,
          round_to: int, total: int, shortfall: bool) -> str:  # fmt: skip
    """The largest divisor of ``round_to`` (1: plain structured pruning) that reaches it."""
    for k in [k for k in range(round_to // 2, 0, -1) if round_to % k == 0]:
        if _reachable(blocks, budget, scope, sparsity, k, shortfall=shortfall):
            return (
                f"round_to={k} reaches it" if k > 1 else "only round_to=1, no rounding, reaches it"
            )
    plain = _removable(blocks, 1) / total
    return (
        f"no smaller round_to reaches it: even without rounding at most {_floor4(plain)} "
        "of the weights can go"
    )


def _highest(blocks: list[AlignedBlock], total: int, scope: str, round_to: int) -> float:
    """The highest sparsity ``scope`` accepts (:func:`max_sparsity`)."""
    removable = _removable(blocks, round_to)
    if scope == "global" or round_to <= 1:
        return removable / total
    # local: the accepted sparsities are not an interval (module docstring); scan the
    # 0.0001 grid down from the global maximum. A budget under one chunk always passes.
    for step in range(math.floor(removable / total * 10**4 + 1e-9), 0, -1):
        sparsity = step / 10**4
        if _reachable(blocks, removal_count(total, sparsity), "local", sparsity, round_to):
            return sparsity
    return 0.0


def max_sparsity(masks: Masks, round_to: int | None, scope: str = "global") -> float:
    """The highest sparsity a ``round_to`` cut of ``masks`` accepts under ``scope``.

    ``global``: every block at its floor (``round_to`` groups, or all of them), ``R / P``;
    a global cut at it removes exactly that. ``local``: the highest sparsity on the 0.0001
    grid at or below that whose rounded counts also land within one chunk of the budget
    (the reach rule, module docstring); 0.0 when no block can shrink. ``round_to`` None or
    1: the plain structured cut, which keeps the best group of every block.

    Raises:
        ConfigError: a bad ``round_to`` for the masks' structure, or an unknown scope.

    Example:
        >>> template = coupled_channel_masks(model, sample)  # doctest: +SKIP
        >>> sfpk.prune(model, data, ..., sparsity=max_sparsity(template, 16))  # doctest: +SKIP
    """
    value = check_round_to(round_to, masks.structure) or 1
    check_choice("scope", scope, ("global", "local"))
    return _highest(aligned_blocks(masks), masks.total_weights(), scope, value)


def check_reachable(
    masks: Masks, sparsity: float, scope: str, round_to: int | None, *, shortfall: bool = True
) -> None:
    """Raise ConfigError when a ``round_to`` cut cannot get near ``sparsity``.

    Which weights can go depends only on the block sizes, not on any score, so this is
    checked before pruning (the rule: module docstring). The maximum the message gives is
    the accepted boundary of ``scope``: asking for it (or less) passes. ``shortfall=False``
    (a target below the final one: SynFlow's inner rounds, iterative rounds) checks the
    first test only; the local rounding then stands as it falls.
    """
    if not is_aligned(round_to) or scope not in ("global", "local"):
        return
    assert round_to is not None
    blocks = aligned_blocks(masks)
    total = masks.total_weights()
    budget = removal_count(total, sparsity)
    if _reachable(blocks, budget, scope, sparsity, round_to, shortfall=shortfall):
        return
    hint = _hint(blocks, budget, scope, sparsity, round_to, total, shortfall)
    kind = blocks[0].kind if blocks else "filters"
    removable = _removable(blocks, round_to)
    if removable == 0:
        why = f"no block has more than {round_to} {kind}, so none can shrink (reachable: 0)"
        advice = "pass"
    elif budget > removable:
        highest, how = removable / total, ""
        if scope == "local" and shortfall:
            highest = _highest(blocks, total, "local", round_to)
            how = (
                " and scope local rounds each block to its nearest width (scope global "
                f"reaches {_floor4(removable / total)})"
            )
        why = (
            f"every block keeps at least {round_to} of its {kind} (all when it has fewer)"
            f"{how}, so at most {_floor4(highest)} of the weights can go"
        )
        advice = "ask for at most that, or pass"
    else:
        local = _local_removed(blocks, sparsity, round_to)
        why = (
            f"scope local moves every block to the nearest multiple of {round_to} {kind}, "
            f"which removes {local / total:.4f} of the weights, more than one chunk of the "
            f"largest block ({_largest_chunk(blocks, round_to)} weights) short of it"
        )
        advice = "use scope global (whole chunks within the budget), or pass"
    raise ConfigError(
        f"sparsity={sparsity} is out of reach with round_to={round_to}: {why}; {advice} a "
        f"smaller round_to ({hint})"
    )


def _stray_follower(masks: Masks) -> str | None:
    """A following bias whose entries differ from its filters' decisions, described."""
    for bias, weight in bias_followers(masks).items():
        if not torch.equal(masks[bias].reshape(-1) != 0, masks[weight].reshape(-1) != 0):
            return f"bias mask {bias!r} differs from the filters of {weight!r}"
    return None


def _misaligned(masks: Masks, round_to: int) -> tuple[AlignedBlock, int] | None:
    """The first block keeping neither a multiple of ``round_to`` (>= it) nor all groups."""
    for block, kept in zip(aligned_blocks(masks), block_kept(masks), strict=True):
        if kept != block.groups and (kept % round_to or kept < round_to):
            return block, kept
    return None


def check_aligned_start(masks: Masks, round_to: int | None, *, keep_pruned: bool = True) -> None:
    """Raise ConfigError unless starting ``masks`` are aligned to ``round_to`` (pruned
    entries form the lowest chunks of the next cut, so they must be whole chunks).

    With ``keep_pruned=False`` (SFPK/SpODE's ``revive_pruned``) the start's zeros do not
    constrain the cut, so any starting masks do.
    """
    if not is_aligned(round_to) or not keep_pruned:
        return
    assert round_to is not None
    bad = _misaligned(masks, round_to)
    if bad is not None:
        block, kept = bad
        raise ConfigError(
            f"round_to={round_to}: the starting masks keep {kept} of the {block.groups} "
            f"{block.kind} of {block.name!r}, neither a multiple of {round_to} nor all; "
            f"prune every round with the same round_to"
        )
    stray = _stray_follower(masks)
    if stray is not None:
        raise ConfigError(
            f"round_to={round_to}: in the starting masks the {stray}; under round_to a "
            "bias follows its layer's filters"
        )


def check_local_start(masks: Masks, sparsity: float, round_to: int) -> None:
    """Raise ConfigError when a block of starting ``masks`` keeps fewer groups than the
    local rounding at ``sparsity`` keeps (its pruned groups never revive, so the local
    count could not be met). Starting masks cut by the same rule at a lower sparsity never
    do: the rounded count does not grow with the sparsity."""
    for block, kept in zip(aligned_blocks(masks), block_kept(masks), strict=True):
        expected = aligned_keep_count(block.groups, sparsity, round_to)
        if kept < expected:
            raise ConfigError(
                f"round_to={round_to}, scope local: the starting masks keep {kept} of the "
                f"{block.groups} {block.kind} of {block.name!r}, fewer than scope local keeps "
                f"at sparsity={sparsity} ({expected}); pruned entries never revive, so prune "
                "with the scope the starting masks were cut with"
            )


def check_aligned(masks: Masks, sparsity: float, scope: str) -> None:
    """Check ``round_to`` masks: every block aligned (following biases equal to their
    filters), the sparsity within what every block at its floor removes, and the count
    rule of ``scope`` (the local shortfall test is one of requests, not of masks: module
    docstring).

    Raises:
        SparsityCheckError: naming the block (or the whole set) and the counts.
    """
    round_to = masks.round_to
    assert round_to is not None
    bad = _misaligned(masks, round_to)
    if bad is not None:
        block, kept = bad
        raise SparsityCheckError(
            f"block {block.name!r} keeps {kept} of {block.groups} {block.kind}, neither a "
            f"multiple of round_to={round_to} (at least {round_to}) nor all of them"
        )
    stray = _stray_follower(masks)
    if stray is not None:
        raise SparsityCheckError(f"the {stray} (round_to={round_to})")
    if scope not in ("global", "local"):
        raise SparsityCheckError(f"round_to masks have scope global or local, not {scope!r}")
    blocks = aligned_blocks(masks)
    total = masks.total_weights()
    budget = removal_count(total, sparsity)
    if budget > _removable(blocks, round_to):  # the local shortfall is a check of requests
        raise SparsityCheckError(
            f"sparsity {sparsity} is out of reach with round_to={round_to} and scope "
            f"{scope} (at most {_floor4(_removable(blocks, round_to) / total)} can go, every "
            "block at its floor)"
        )
    if scope == "local":
        for block, kept in zip(blocks, block_kept(masks), strict=True):
            expected = aligned_keep_count(block.groups, sparsity, round_to)
            if kept != expected:
                raise SparsityCheckError(
                    f"block {block.name!r} keeps {kept} of {block.groups} {block.kind}, "
                    f"expected {expected} (sparsity {sparsity}, round_to={round_to})"
                )
        return
    removed = total - masks.kept_weights()
    largest = max(_largest_chunk(blocks, round_to), 1)
    if not budget - largest < removed <= budget:
        raise SparsityCheckError(
            f"removed {removed} of {total} weights, expected {budget} up to one chunk of "
            f"{largest} (sparsity {sparsity}, round_to={round_to})"
        )
