"""Property-based tests of mask selection: exact counts and determinism on any score set.

Hypothesis draws score sets the hand-written tests cannot enumerate: many ties (values from
a tiny set), exact zeros, negative scores, layers of one or two weights, and sparsities
right at a rounding boundary. Whatever it draws, a cut removes exactly the requested number
of entries, the same ones every time, never a higher score before a lower one, and a NaN
score is refused instead of being silently ranked.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfpk.errors import SfpkError
from sfpk.masks.core import Masks, removal_count
from sfpk.selection.cuts import cut
from sfpk.selection.topk import select_topk

# Few distinct values: ties everywhere, and zeros (pruned-looking scores) often.
_VALUES = st.sampled_from([0.0, 0.0, 1.0, 1.0, 2.0, -1.0, 0.5, 3.0])
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _layers(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """1-3 tiny 2-D score tensors (a row count and a row length of 1-4)."""
    count = draw(st.integers(1, 3))
    layers = {}
    for i in range(count):
        rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        values = draw(st.lists(_VALUES, min_size=rows * cols, max_size=rows * cols))
        layers[f"layer{i}.weight"] = torch.tensor(values, dtype=torch.float32).view(rows, cols)
    return layers


@st.composite
def _score_sets(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], float]:
    layers = _layers(draw)
    sparsity = draw(st.floats(0.01, 0.99, allow_nan=False))
    return layers, sparsity


def _template(scores: dict[str, torch.Tensor]) -> Masks:
    return Masks(
        {n: torch.ones_like(s) for n, s in scores.items()},
        shapes={n: tuple(s.shape) for n, s in scores.items()},
    )


@_SETTINGS
@given(values=st.lists(_VALUES, min_size=1, max_size=30), data=st.data())
def test_cut_removes_exactly_the_count_lowest_first_ties_by_index(values, data):
    """`cut` drops exactly `remove` entries, none scoring above a kept one, ties by index."""
    scores = torch.tensor(values, dtype=torch.float64)
    remove = data.draw(st.integers(0, len(values)))
    keep = cut(scores, remove)
    assert int((keep == 0).sum()) == remove
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    dropped, kept = scores[keep == 0], scores[keep == 1]
    if len(dropped) and len(kept):
        assert dropped.max() <= kept.min()
        tau = dropped.max()
        tied = torch.nonzero(scores == tau).flatten().tolist()
        removed_ties = [i for i in tied if keep[i] == 0]
        assert removed_ties == tied[: len(removed_ties)]  # lower index goes first
    assert torch.equal(keep, cut(scores.clone(), remove))  # deterministic


@_SETTINGS
@given(case=_score_sets(), scope=st.sampled_from(["global", "local"]))
def test_select_topk_keeps_exact_counts_and_is_deterministic(case, scope):
    """Any tiny score set with ties and zeros gives exactly floor(s * P) removed, repeatably."""
    scores, sparsity = case
    template = _template(scores)
    masks = select_topk(scores, template, sparsity=sparsity, scope=scope)
    again = select_topk({n: s.clone() for n, s in scores.items()}, template, sparsity=sparsity,
                        scope=scope)  # fmt: skip
    for name in scores:
        assert torch.equal(masks[name], again[name])
        assert set(masks[name].unique().tolist()) <= {0.0, 1.0}
    total = sum(s.numel() for s in scores.values())
    removed = sum(int((m == 0).sum()) for m in masks.values())
    if scope == "global":
        assert removed == removal_count(total, sparsity)
    else:
        for name, s in scores.items():
            assert int((masks[name] == 0).sum()) == removal_count(s.numel(), sparsity)


@_SETTINGS
@given(case=_score_sets(), guard=st.sampled_from(["row", "layer"]))
def test_the_collapse_guard_keeps_counts_exact_and_layers_alive(case, guard):
    """With the guard on, the count stays exact; every layer keeps a weight when it can."""
    scores, sparsity = case
    masks = select_topk(scores, _template(scores), sparsity=sparsity, guard=guard)
    total = sum(s.numel() for s in scores.values())
    kept = total - removal_count(total, sparsity)
    assert sum(int(m.sum()) for m in masks.values()) == kept
    if kept >= len(scores):  # room for one weight per layer
        assert all(int(m.sum()) >= 1 for m in masks.values())


@_SETTINGS
@given(case=_score_sets(), data=st.data())
def test_a_nan_score_anywhere_is_refused(case, data):
    """A NaN has no rank: selection stops with an error instead of keeping or dropping it."""
    scores, sparsity = case
    name = data.draw(st.sampled_from(sorted(scores)))
    index = data.draw(st.integers(0, scores[name].numel() - 1))
    scores[name].view(-1)[index] = math.nan
    with pytest.raises(SfpkError, match="NaN"):
        select_topk(scores, _template(scores), sparsity=sparsity)
