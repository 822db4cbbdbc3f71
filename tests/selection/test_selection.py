"""Top-k selection: exact counts, tie-breaking, NaN, keep_pruned, structured budgets, checks."""

from __future__ import annotations

import math

import pytest
import torch

import sfpk
from sfpk.errors import ConfigError, SparsityCheckError
from sfpk.masks.core import Masks, removal_count
from sfpk.selection.topk import check_achieved_sparsity, select_topk


def _template(*sizes: int) -> Masks:
    """Element-wise masks over 2-D tensors named w0, w1, ... of shape (1, size)."""
    names = [f"w{i}" for i in range(len(sizes))]
    return Masks(
        {n: torch.ones(1, s) for n, s in zip(names, sizes, strict=True)},
        shapes={n: (1, s) for n, s in zip(names, sizes, strict=True)},
    )


def _filter_template(channels: list[int], per_filter: list[int]) -> Masks:
    """Filter masks over conv-shaped parameters (C_out, per_filter, 1, 1)."""
    names = [f"c{i}" for i in range(len(channels))]
    shapes = {n: (c, k, 1, 1) for n, c, k in zip(names, channels, per_filter, strict=True)}
    return Masks(
        {n: torch.ones(c, 1, 1, 1) for n, c in zip(names, channels, strict=True)},
        shapes=shapes,
        structure="filter",
    )


def test_removal_count_is_robust_to_float_error():
    """0.29 * 100 is 28.999... in floating point; the count must still be 29."""
    assert removal_count(100, 0.29) == 29
    assert removal_count(62, 0.5) == 31
    assert removal_count(7, 0.99) == 6


def test_removal_count_is_exact_for_large_models():
    """Float error grows with the count: 0.29 * 1e8 = 28999999.999999996 must give 29e6."""
    assert removal_count(10**8, 0.29) == 29_000_000
    assert removal_count(35_403_300, 0.94) == 33_279_102
    assert removal_count(10**8, 0.123456789) == 12_345_678


def test_global_topk_removes_exact_count_with_ties():
    """With all scores equal, exactly floor(s*P) go, lowest flat index first."""
    template = _template(4, 6)
    scores = {"w0": torch.ones(1, 4), "w1": torch.ones(1, 6)}
    masks = select_topk(scores, template, sparsity=0.55, scope="global")
    flat = torch.cat([masks["w0"].reshape(-1), masks["w1"].reshape(-1)])
    assert flat.tolist() == [0.0] * 5 + [1.0] * 5
    assert masks.kept_weights() == 10 - 5


def test_ties_are_broken_deterministically_across_calls():
    """Repeated selection on tied scores must give the same masks (reproducible runs)."""
    template = _template(50)
    scores = {"w0": torch.tensor([[float(i % 3) for i in range(50)]])}
    first = select_topk(scores, template, sparsity=0.5)
    second = select_topk(scores, template, sparsity=0.5)
    assert torch.equal(first["w0"], second["w0"])
    # 17 zeros (i%3==0) go first, then the first 8 of the ones (i%3==1) by index.
    removed = (first["w0"][0] == 0).nonzero().reshape(-1).tolist()
    zeros = [i for i in range(50) if i % 3 == 0]
    ones = [i for i in range(50) if i % 3 == 1][:8]
    assert removed == sorted(zeros + ones)


def test_global_topk_keeps_highest_scores():
    """Global scope ranks all tensors together: the lowest scores go wherever they are."""
    template = _template(3, 3)
    scores = {"w0": torch.tensor([[5.0, 0.1, 4.0]]), "w1": torch.tensor([[0.2, 3.0, 0.3]])}
    masks = select_topk(scores, template, sparsity=0.5)
    assert masks["w0"].tolist() == [[1.0, 0.0, 1.0]]
    assert masks["w1"].tolist() == [[0.0, 1.0, 0.0]]


def test_local_topk_is_exact_per_layer():
    """Local scope removes floor(s*numel) from every tensor, whatever the score scales."""
    template = _template(10, 7, 3)
    scores = {"w0": torch.rand(1, 10) * 1000, "w1": torch.rand(1, 7), "w2": torch.rand(1, 3) - 5}
    masks = select_topk(scores, template, sparsity=0.6, scope="local")
    assert [masks.kept_weights(n) for n in masks] == [4, 3, 2]


def test_nan_scores_raise():
    """A NaN score would make the ranking arbitrary; it must be an error, not a silent mask."""
    template = _template(4)
    scores = {"w0": torch.tensor([[1.0, float("nan"), 2.0, 3.0]])}
    with pytest.raises(sfpk.SfpkError, match="NaN"):
        select_topk(scores, template, sparsity=0.5)


def test_keep_pruned_signed_scores_never_revive():
    """Entries zero in the template stay zero even when their (signed) score is the largest."""
    template = _template(10).with_tensors({"w0": torch.tensor([[0.0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])})
    scores = {"w0": torch.tensor([[100.0, 50.0, -1, -2, -3, -4, -5, -6, -7, -8]])}
    masks = select_topk(scores, template, sparsity=0.5)
    assert masks["w0"].tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]


def test_keep_pruned_holds_when_template_is_sparser_than_target():
    """A template already sparser than the target must not have zeros revived to fill it."""
    template = _template(10).with_tensors({"w0": torch.tensor([[0.0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])})
    scores = {"w0": -torch.arange(10.0).reshape(1, 10)}  # pruned entries score highest
    for scope in ("global", "local"):
        masks = select_topk(scores, template, sparsity=0.2, scope=scope)
        assert masks["w0"][0, :4].tolist() == [0.0] * 4


def test_keep_pruned_false_allows_revival():
    """keep_pruned=False ranks pruned entries like any other (the opt-out really works)."""
    template = _template(4).with_tensors({"w0": torch.tensor([[0.0, 1, 1, 1]])})
    scores = {"w0": torch.tensor([[9.0, 1.0, 2.0, 3.0]])}
    masks = select_topk(scores, template, sparsity=0.5, keep_pruned=False)
    assert masks["w0"].tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_structured_global_ranks_groups_per_weight():
    """Group scores are sums, so ranking per weight keeps large groups from being favoured."""
    # c0: 4 filters of 10 weights, c1: 4 filters of 2 weights; P = 48, budget floor(.5*48) = 24.
    template = _filter_template([4, 4], [10, 2])
    scores = {
        "c0": torch.tensor([10.0, 1.0, 2.0, 9.0]).reshape(4, 1, 1, 1),  # per weight 1, .1, .2, .9
        "c1": torch.tensor([1.0, 0.6, 1.5, 1.6]).reshape(4, 1, 1, 1),  # per weight .5, .3, .75, .8
    }
    masks = select_topk(scores, template, sparsity=0.5)
    # Removal order: c0[1] (10), c0[2] (10) -> 20, c1[1] (2) -> 22, c1[0] (2) -> 24 = budget.
    assert masks["c0"].reshape(-1).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert masks["c1"].reshape(-1).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert masks.total_weights() - masks.kept_weights() == 24


def test_structured_global_never_cuts_a_whole_layer():
    """Even when one layer's scores are all lowest, its best group survives."""
    template = _filter_template([3, 5], [4, 4])
    scores = {
        "c0": torch.tensor([-3.0, -2.0, -1.0]).reshape(3, 1, 1, 1),
        "c1": torch.arange(1.0, 6.0).reshape(5, 1, 1, 1),
    }
    masks = select_topk(scores, template, sparsity=0.6)  # budget floor(.6*32) = 19 -> 4 groups
    assert masks["c0"].reshape(-1).tolist() == [0.0, 0.0, 1.0]
    assert masks["c1"].reshape(-1).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    budget = math.floor(0.6 * 32)
    removed = 32 - masks.kept_weights()
    assert budget - 4 < removed <= budget


def test_structured_global_skips_groups_that_overshoot():
    """A big group that would exceed the budget is skipped and a smaller one taken instead."""
    template = _filter_template([2, 3], [6, 1])  # P = 12 + 3 = 15, budget floor(.4*15) = 6
    scores = {
        "c0": torch.tensor([0.6, 60.0]).reshape(2, 1, 1, 1),  # per weight .1, 10
        "c1": torch.tensor([0.05, 0.5, 3.0]).reshape(3, 1, 1, 1),  # per weight .05, .5, 3
    }
    masks = select_topk(scores, template, sparsity=0.4)
    # c1[0] (1) -> 1; c0[0] (6) would give 7 > 6: skipped; c1[1] (1) -> 2; c1[2] is c1's best.
    assert masks["c0"].reshape(-1).tolist() == [1.0, 1.0]
    assert masks["c1"].reshape(-1).tolist() == [0.0, 0.0, 1.0]


def test_score_shape_mismatch_raises():
    """Scores in weight shape for a structured mask are a pruner bug; say so clearly."""
    template = _filter_template([2], [3])
    with pytest.raises(sfpk.ConfigError, match="expected the mask shape"):
        select_topk({"c0": torch.ones(2, 3, 1, 1)}, template, sparsity=0.5)


def test_missing_score_raises():
    """A pruner that forgets a parameter must fail loudly, naming it."""
    with pytest.raises(sfpk.ConfigError, match="w1"):
        select_topk({"w0": torch.ones(1, 2)}, _template(2, 2), sparsity=0.5)


def test_selected_masks_keep_template_dtype_and_metadata():
    """Selected masks are exact 0/1 in the template's dtype and record target and scope."""
    template = _template(8).to(dtype=torch.float64)
    masks = select_topk({"w0": torch.rand(1, 8)}, template, sparsity=0.25, scope="local")
    assert masks["w0"].dtype == torch.float64
    assert set(masks["w0"].unique().tolist()) == {0.0, 1.0}
    assert (masks.target_sparsity, masks.scope) == (0.25, "local")


def test_check_achieved_sparsity_rejects_wrong_global_count():
    """The post-pruning check must catch one weight too many or too few."""
    template = _template(10)
    good = select_topk({"w0": torch.rand(1, 10)}, template, sparsity=0.3)
    check_achieved_sparsity(good, 0.3, "global")
    bad = good.with_tensors({"w0": torch.ones(1, 10)})
    with pytest.raises(SparsityCheckError, match="expected exactly 3"):
        check_achieved_sparsity(bad, 0.3, "global")


def test_check_achieved_sparsity_rejects_wrong_layer_count():
    """Under local scope, a layer off by one entry is named in the error."""
    masks = _template(4, 4).with_tensors(
        {"w0": torch.tensor([[0.0, 0, 1, 1]]), "w1": torch.tensor([[0.0, 1, 1, 1]])}
    )
    with pytest.raises(SparsityCheckError, match="w1"):
        check_achieved_sparsity(masks, 0.5, "local")


def test_global_structured_with_one_group_per_tensor_keeps_everything():
    """Every tensor's single group is protected, so nothing is removed (and nothing crashes)."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 1))
    template = Masks.ones(model, structure="filter")
    scores = {n: torch.rand(m.shape) for n, m in template.items()}
    masks = select_topk(scores, template, sparsity=0.5, scope="global")
    assert masks.kept_weights() == masks.total_weights()


def test_scores_for_unmasked_parameters_are_an_error():
    """A score the masks cannot use points at a pruner bug; it is not silently dropped."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3))
    template = Masks.ones(model)
    scores = {"0.weight": torch.rand(3, 4), "0.bias": torch.rand(3)}
    with pytest.raises(ConfigError, match="0.bias"):
        select_topk(scores, template, sparsity=0.5)


# -- the shared cuts used by the particle engine --------------------------------------------
def test_cut_tie_rules():
    """stable drops exactly k (ties by index); drop removes every tie at τ; keep none."""
    from sfpk.selection.cuts import cut

    values = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert cut(values, 1).tolist() == [1, 0, 1, 1, 1]
    assert cut(values, 2, ties="stable").tolist() == [1, 0, 1, 0, 1]
    assert cut(values, 1, ties="drop").tolist() == [1, 0, 1, 0, 1]
    assert cut(values, 1, ties="keep").tolist() == [1, 1, 1, 1, 1]
    assert cut(values, 3, ties="keep").tolist() == [1, 0, 1, 0, 1]
    assert cut(values, 0).tolist() == [1] * 5 and cut(values, 9).tolist() == [0] * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ties", ["drop", "keep", "stable"])
def test_cut_thresholds_match_a_sorted_reference(dtype, ties):
    """Every tie rule (numpy on CPU floats, torch otherwise) keeps exactly the entries
    above (drop) or at least (keep) the k-th smallest, or all but the k lowest in a stable
    sort (stable), ties included, in the values' dtype, also on a strided row."""
    from sfpk.selection.cuts import cut

    gen = torch.Generator().manual_seed(5)
    values = (torch.randint(0, 200, (2, 9000), generator=gen).to(dtype) / 7)[0]  # ties
    strided = torch.rand(18_000, generator=gen).to(dtype)[::2]
    for row in (values, strided):
        for k in (1, 4000, 8999):
            tau = row.float().sort().values[k - 1]
            expected = row.float() > tau if ties == "drop" else row.float() >= tau
            if ties == "stable":
                expected = torch.ones(row.numel(), dtype=torch.bool)
                expected[row.float().sort(stable=True).indices[:k]] = False
            keep = cut(row, k, ties=ties)
            assert keep.dtype == dtype
            assert torch.equal(keep.bool(), expected)


def test_weighted_cut_counts_removed_weights():
    """Groups are ranked by score per weight and the budget is counted in weights."""
    from sfpk.selection.cuts import weighted_cut

    values = torch.tensor([4.0, 1.0, 9.0, 2.0])
    weights = torch.tensor([4.0, 1.0, 3.0, 1.0])  # per weight 1, 1, 3, 2; cumsum 4, 5, 6, 9
    # Budget 4.5: only the first group fits, τ = 1; its tie (group 1) follows the rule.
    assert weighted_cut(values, weights, 4.5, ties="keep").tolist() == [1, 1, 1, 1]
    assert weighted_cut(values, weights, 4.5, ties="drop").tolist() == [0, 0, 1, 1]
    # Budget 6: three groups fit, τ = 2.
    assert weighted_cut(values, weights, 6.0, ties="keep").tolist() == [0, 0, 1, 1]
    assert weighted_cut(values, weights, 6.0, ties="drop").tolist() == [0, 0, 1, 0]
    assert weighted_cut(values, weights, 3.5) is None  # not even the first group fits


def test_round_sparsity_is_exponential_and_ends_on_target():
    """Round k of K keeps (1-s)^((k+1)/K); the last round is the target exactly."""
    from sfpk.selection.topk import round_sparsity

    assert [round(round_sparsity(0.75, k, 2), 12) for k in range(2)] == [0.5, 0.75]
    assert round_sparsity(0.9, 2, 3) == 0.9
    assert round_sparsity(0.3, 0, 1) == 0.3
