"""Channel-aligned structured widths (``round_to``): every block keeps a multiple of K groups.

CPU convolution kernels work on blocks of 16 fp32 channels (AVX-512; 8 with AVX2), so a
slim layer with 5, 9 or 11 channels fills a block only partly and runs at a lower
arithmetic rate than its MAC count suggests (``docs/performance.md``, "Why not").
``round_to=K`` makes structured pruning keep widths the kernels like:

* a **block** is one mask tensor for ``structure="filter"`` / ``"channel"`` (its filters or
  input channels are the groups), and one coupled channel group of
  :mod:`sfpk.deploy.channel_groups` for ``"coupled"`` (its channels are the groups). A bias with a
  mask of its own (``include_bias=True``) is no block: entry ``i`` follows filter ``i`` of
  its layer (:func:`bias_followers`), whose weight it joins; 1-D masks with no filter to
  follow (channel masks) are an error;
* every block keeps a multiple of K of its groups, at least K, or all of them; a block of
  ``G <= K`` groups is never shrunk (it keeps all G: shrinking it would leave it below one
  block of K, which is what the option exists to avoid);
* ``local``: a block keeps ``G - floor(sparsity * G)`` rounded to the nearest count it may
  keep (a multiple of K from K up to G, or G itself; ties keep more);
* ``global``: per block, the groups sorted by score per weight (stable) form **chunks**:
  first the ``G mod K`` lowest (so what stays is a multiple of K), then chunks of K; the
  best K are never a chunk. Chunks of every block are ranked by their mean score per
  weight and removed lowest first within ``floor(sparsity * P)`` weights, skipping one that
  would overshoot (:func:`sfpk.selection.cuts.greedy_removal`, the rule of the plain global
  cut). Within a block the chunk scores never decrease and later chunks are never smaller,
  so a block loses its chunks in order, and the total is within one chunk of the budget.

The module has three parts: the **blocks** of a mask set and their counts, the **global
chunk cut** (:func:`aligned_global_cut`), and the **checks** (the reach rule before pruning,
starting and finished masks). The particle engine's in-simulation thresholds ignore
``round_to``; only the final selection (:func:`sfpk.selection.topk.select_topk`) and its
check use it.

**Blocks.** A block is one mask tensor of filter/channel masks (biases that follow their layer's
filters join those filters) or one coupled channel group; the first part below resolves
``round_to``, finds the blocks and their groups, the local rounded count of a block, and the
groups each block of finished masks keeps.

**Checks** of ``round_to`` cuts: the reach rule before pruning, the alignment of starting
masks, and the alignment and counts of finished masks.

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, SfpkError, SparsityCheckError, check_choice, check_number
from ..masks.core import ALIGNED_STRUCTURES, Masks, removal_count
from .cuts import block_starts, greedy_removal

__all__ = [
    "AlignedBlock",
    "aligned_blocks",
    "aligned_global_cut",
    "aligned_keep_count",
    "bias_followers",
    "block_kept",
    "check_aligned",
    "check_aligned_start",
    "check_local_start",
    "check_reachable",
    "check_round_to",
    "entry_groups",
    "group_alive",
    "is_aligned",
    "max_sparsity",
]


def aligned_global_cut(
    values: Tensor, weights: Tensor, sizes: list[int], budget: int, round_to: int
) -> Tensor:
    """Keep vector of the global ``round_to`` cut (module docstring) of groups ``values``.

    Args:
        values: ``[groups]`` scores, blocks of ``sizes`` consecutive groups; higher keeps.
        weights: ``[groups]`` weights each group controls (equal within a block).
        sizes: groups per block.
        budget: how many weights may go.
        round_to: K; a block keeps a multiple of K groups, or all of them.
    """
    per_weight = values / weights
    chunk_of = torch.full((values.numel(),), -1, dtype=torch.long, device=values.device)
    spans: list[tuple[int, int]] = []  # each block's chunk index range
    for start, size in zip(block_starts(sizes), sizes, strict=True):
        removable = size - round_to
        if removable <= 0:
            continue
        order = torch.sort(per_weight[start : start + size], stable=True).indices + start
        first = removable % round_to  # the G mod K lowest go (or stay) together
        position = torch.arange(removable, device=values.device)
        local = torch.div(position - first, round_to, rounding_mode="floor") + int(first > 0)
        begin = spans[-1][1] if spans else 0
        chunk_of[order[:removable]] = local + begin
        spans.append((begin, begin + int(local[-1]) + 1))
    keep = torch.ones_like(values)
    if not spans:
        return keep
    member = chunk_of >= 0
    count = spans[-1][1]
    chunk_weights = torch.zeros(count, dtype=weights.dtype, device=values.device)
    chunk_weights.index_add_(0, chunk_of[member], weights[member])
    sums = torch.zeros(count, dtype=per_weight.dtype, device=values.device)
    sums.index_add_(0, chunk_of[member], per_weight[member])
    means = sums / torch.bincount(chunk_of[member], minlength=count).to(sums.dtype)
    for begin, end in spans:  # non-decreasing within a block, also after float rounding
        means[begin:end] = torch.cummax(means[begin:end], 0).values
    order = torch.sort(means, stable=True).indices
    removed = torch.zeros(count, dtype=torch.bool, device=values.device)
    removed[greedy_removal(order, chunk_weights, budget)] = True
    for begin, end in spans:  # a block loses its chunks in order (module docstring)
        assert not bool((removed[begin + 1 : end] & ~removed[begin : end - 1]).any())
    keep[member & removed[chunk_of.clamp(min=0)]] = 0.0
    return keep


def check_round_to(round_to: Any, structure: str, *, name: str = "round_to") -> int | None:
    """``round_to`` resolved (None, or an int >= 1), else ConfigError naming it ``name``.

    Raises:
        ConfigError: not a whole number >= 1 (a bool, a string, 2.5, 0), or a value above 1
            with a structure other than filter, channel or coupled.
    """
    if round_to is None:
        return None
    value = check_number(name, round_to, integer=True)
    if value < 1:
        raise ConfigError(f"{name}={round_to!r} must be >= 1 (None or 1: no rounding)")
    if value > 1 and structure not in ALIGNED_STRUCTURES:
        raise ConfigError(
            f"{name}={value} keeps a multiple of {value} filters/channels per layer and needs "
            f"structure {', '.join(ALIGNED_STRUCTURES)}, not structure={structure!r}"
        )
    return value


def is_aligned(round_to: int | None) -> bool:
    """Whether ``round_to`` asks for rounding (None and 1 do not)."""
    return round_to is not None and round_to > 1


@dataclass(frozen=True)
class AlignedBlock:
    """One block of a mask set: ``groups`` filters/channels of ``weight`` weights each
    (a filter's weight counts its bias entry when that bias follows it)."""

    name: str
    groups: int
    weight: int
    kind: str


def bias_followers(masks: Masks) -> dict[str, str]:
    """1-D masks that follow a filter mask's decision: bias name -> weight name.

    With ``include_bias=True`` a layer's bias gets a mask of its own; under ``round_to``
    its entry ``i`` is kept exactly when filter ``i`` of the layer is (as ``tied_biases``
    do for biases without a mask), so it is part of that filter, not a block of its own.

    Raises:
        ConfigError: a 1-D mask with no filter mask of its layer to follow (channel
            masks, a bias whose weight is excluded, a selected BatchNorm weight).
    """
    if masks.coupling is not None:
        return {}
    followers, orphans = {}, []
    for name in masks:
        if len(masks.shapes[name]) != 1:
            continue
        weight = f"{name.rsplit('.', 1)[0]}.weight" if "." in name else "weight"
        shape = masks.shapes.get(weight)
        if (
            masks.structure == "filter"
            and shape
            and len(shape) > 1
            and shape[0] == masks.shapes[name][0]
        ):
            followers[name] = weight
        else:
            orphans.append(name)
    if orphans:
        raise ConfigError(
            f"round_to aligns the widths of layers; the 1-D mask(s) {', '.join(orphans[:5])} "
            f"have no {'filter' if masks.structure == 'filter' else 'output-filter'} mask of "
            "their layer to follow (structure="
            f"{masks.structure!r}); pass include_bias=False or exclude them"
        )
    return followers


def aligned_blocks(masks: Masks) -> list[AlignedBlock]:
    """The blocks of ``masks`` in flat order: coupled groups, else one per mask tensor
    (biases that follow their layer's filters are part of those filters, not blocks)."""
    if masks.coupling is not None:
        weights = masks.coupling.group_weights(masks.shapes)
        starts = block_starts(masks.coupling.block_sizes())
        return [
            AlignedBlock(b.name, b.groups, int(weights[start]), f"{b.kind}s")
            for b, start in zip(masks.coupling.blocks, starts, strict=True)
        ]
    followers = bias_followers(masks)
    led = set(followers.values())
    kind = "channels" if masks.structure == "channel" else "filters"
    return [
        AlignedBlock(n, masks[n].numel(), masks.weights_per_entry(n) + int(n in led), kind)
        for n in masks
        if n not in followers
    ]


def entry_groups(masks: Masks) -> tuple[Tensor, list[int], Tensor]:
    """For filter/channel ``masks``: the group of every flat mask entry (a following bias
    entry shares its filter's), the groups per block, and the weights of every group."""
    followers = bias_followers(masks)
    blocks = aligned_blocks(masks)
    first = dict(
        zip([b.name for b in blocks], block_starts([b.groups for b in blocks]), strict=True)
    )
    index = torch.cat([torch.arange(masks[n].numel()) + first[followers.get(n, n)] for n in masks])
    weights = torch.cat([torch.full((b.groups,), b.weight, dtype=torch.float64) for b in blocks])
    return index, [b.groups for b in blocks], weights


def aligned_keep_count(groups: int, sparsity: float, round_to: int) -> int:
    """Groups a block keeps under ``local`` scope: ``groups - floor(sparsity * groups)``
    moved to the nearest count it may keep (a multiple of ``round_to`` in
    ``[round_to, groups]``, or ``groups``); ties keep more."""
    if groups <= round_to:
        return groups
    wanted = groups - removal_count(groups, sparsity)
    below = wanted // round_to * round_to
    allowed = [c for c in (below, below + round_to) if round_to <= c <= groups] + [groups]
    return min(allowed, key=lambda c: (abs(c - wanted), -c))


def group_alive(masks: Masks) -> Tensor:
    """``[groups]`` bool: which coupled groups ``masks`` keep.

    Raises:
        SparsityCheckError: a group is only partly removed.
    """
    coupling = masks.coupling
    assert coupling is not None
    owners = coupling.entry_groups(masks.shapes)
    index = torch.cat([owners[n] for n in masks])
    flat = torch.cat([(masks[n] != 0).reshape(-1).to("cpu", torch.float64) for n in masks])
    kept = torch.zeros(coupling.num_groups, dtype=torch.float64).index_add_(0, index, flat)
    members = torch.zeros_like(kept).index_add_(0, index, torch.ones_like(flat))
    if bool(((kept != 0) & (kept != members)).any()):
        raise SparsityCheckError("a coupled head/neuron group is only partly removed")
    return kept != 0


def block_kept(masks: Masks) -> list[int]:
    """Groups every block of :func:`aligned_blocks` keeps."""
    if masks.coupling is None:
        followers = bias_followers(masks)
        return [int(torch.count_nonzero(masks[n])) for n in masks if n not in followers]
    alive = group_alive(masks)
    return [int(a.sum()) for a in alive.split(masks.coupling.block_sizes())]


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


def _check_alignment(
    masks: Masks, round_to: int, error: type[SfpkError], whose: str, hint: str
) -> None:
    """Raise ``error`` unless every block of ``masks`` keeps a multiple of ``round_to`` (at
    least it) or all its groups, and every following bias equals its filters' decisions.

    The one alignment rule of starting masks (:func:`check_aligned_start`, a ConfigError
    with ``hint`` saying what to do) and of finished ones (:func:`check_aligned`, a
    SparsityCheckError); ``whose`` names the masks in the message.
    """
    bad = _misaligned(masks, round_to)
    if bad is not None:
        block, kept = bad
        raise error(
            f"round_to={round_to}: {whose} keep {kept} of the {block.groups} {block.kind} of "
            f"{block.name!r}, neither a multiple of {round_to} (at least {round_to}) nor "
            f"all{hint}"
        )
    stray = _stray_follower(masks)
    if stray is not None:
        raise error(
            f"round_to={round_to}: in {whose} the {stray}; under round_to a bias follows its "
            "layer's filters"
        )


def check_aligned_start(masks: Masks, round_to: int | None, *, keep_pruned: bool = True) -> None:
    """Raise ConfigError unless starting ``masks`` are aligned to ``round_to`` (pruned
    entries form the lowest chunks of the next cut, so they must be whole chunks).

    With ``keep_pruned=False`` (SFPK/SpODE's ``revive_pruned``) the start's zeros do not
    constrain the cut, so any starting masks do.
    """
    if not is_aligned(round_to) or not keep_pruned:
        return
    assert round_to is not None
    _check_alignment(
        masks,
        round_to,
        ConfigError,
        "the starting masks",
        "; prune every round with the same round_to",
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
    _check_alignment(masks, round_to, SparsityCheckError, "the masks", "")
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
