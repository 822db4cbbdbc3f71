"""round_to: structured masks keep channel-aligned widths (a multiple of K, or all)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import sfpk
from helpers import random_batches, tiny_options
from sfpk.api import check_pruning
from sfpk.cli import main
from sfpk.errors import ConfigError, SparsityCheckError
from sfpk.masks.core import Masks, removal_count
from sfpk.masks.files import read_mask_file
from sfpk.selection.aligned import aligned_keep_count, check_reachable
from sfpk.selection.topk import check_achieved_sparsity, select_topk

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _mlp(seed: int = 0) -> nn.Module:
    """12 -> 20 -> 10 -> 3: filter blocks of 20 (a multiple of 4) and 10 (not one)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3)
    )


def _kept(masks: Masks) -> dict[str, int]:
    return {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}


def _allowed(groups: int, k: int) -> set[int]:
    return {groups} | set(range(k, groups + 1, k))


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_keeps_a_multiple_of_round_to_filters_per_layer(method, scope):
    """Each layer keeps a multiple of 4 filters or all of them, whatever scored them."""
    model, data = _mlp(), random_batches((12,), 3, count=2)
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.5, structure="filter", scope=scope,
        round_to=4, **tiny_options(method),
    )  # fmt: skip
    kept = _kept(masks)
    assert set(kept) == {"0.weight", "2.weight"}  # the classifier keeps its classes
    assert masks.round_to == 4
    if scope == "local":  # 20 -> 10 wanted: 8 and 12 are as near, keep more; 10 -> 5: 4
        assert kept == {"0.weight": 12, "2.weight": 4}
        return
    for name, count in kept.items():
        assert count in _allowed(masks[name].numel(), 4), (name, count)
    budget = removal_count(masks.total_weights(), 0.5)
    removed = masks.total_weights() - masks.kept_weights()
    assert budget - 4 * 20 < removed <= budget  # within one chunk (4 filters of 20 weights)


@pytest.mark.parametrize(
    ("groups", "sparsity", "k", "kept"),
    [
        (20, 0.5, 4, 12),  # 10 wanted: 8 and 12 tie, keep more
        (10, 0.5, 4, 4),  # 5 wanted: 4 is nearest
        (3, 0.9, 4, 3),  # fewer groups than K: never shrunk
        (16, 0.9, 16, 16),  # exactly K: never shrunk
        (64, 0.9, 16, 16),  # 7 wanted: at least K
        (20, 0.01, 16, 20),  # 20 wanted: all of them is nearer than 16
        (20, 0.3, 16, 16),  # 14 wanted
        (40, 0.5, 16, 16),  # 20 wanted: 16 is nearer than 32
        (64, 0.7, 16, 16),  # 20 wanted
        (64, 0.5, 16, 32),
    ],
)
def test_local_count_is_the_nearest_aligned_width(groups, sparsity, k, kept):
    """Local scope: the kept count is rounded to a multiple of K in [K, G], or G."""
    assert aligned_keep_count(groups, sparsity, k) == kept


def _two_layers() -> tuple[Masks, dict[str, torch.Tensor]]:
    """Filter masks of 6 filters x 2 weights (``a``) and 8 filters x 6 weights (``b``), with
    scores per weight a: 1..6 and b: 0.5, 0.6, 0.7, 0.8, then 9 x 4 (P = 60)."""
    shapes = {"a": (6, 2), "b": (8, 6)}
    template = Masks(
        {n: torch.ones(s[0], 1) for n, s in shapes.items()}, shapes=shapes, structure="filter"
    )
    per_weight = {"a": torch.arange(1.0, 7.0), "b": torch.tensor([0.5, 0.6, 0.7, 0.8] + [9.0] * 4)}
    scores = {"a": (per_weight["a"] * 2).reshape(6, 1), "b": (per_weight["b"] * 6).reshape(8, 1)}
    return template, scores


@pytest.mark.parametrize(
    ("sparsity", "kept_a", "kept_b", "removed"),
    [
        (0.4667, 4, 4, 28),  # budget 28: b's chunk (24 weights), then a's two lowest (4)
        (0.4, 6, 4, 24),  # budget 24: b's chunk fits, a's would overshoot
        (0.3, 4, 8, 4),  # budget 18: b's chunk overshoots and is skipped; a's fits
    ],
)
def test_global_cut_removes_whole_chunks_lowest_mean_first(sparsity, kept_a, kept_b, removed):
    """Chunks: a's G mod K = 2 lowest, b's 4 lowest; the best K of each stay."""
    template, scores = _two_layers()
    masks = select_topk(scores, template, sparsity=sparsity, scope="global", round_to=4)
    assert _kept(masks) == {"a": kept_a, "b": kept_b}
    assert masks.total_weights() - masks.kept_weights() == removed
    assert masks["a"].reshape(-1)[-4:].tolist() == [1.0] * 4  # the best four always stay
    assert masks["b"].reshape(-1)[4:].tolist() == [1.0] * 4
    check_achieved_sparsity(masks, sparsity, "global")


def test_round_to_one_selects_exactly_as_no_rounding():
    """round_to=1 is no rounding: the masks equal those of the plain structured cut."""
    template, scores = _two_layers()
    for scope in ("global", "local"):
        plain = select_topk(scores, template, sparsity=0.45, scope=scope)
        one = select_topk(scores, template, sparsity=0.45, scope=scope, round_to=1)
        assert all(torch.equal(plain[n], one[n]) for n in plain)


@pytest.mark.parametrize(
    ("sparsity", "hint"),
    [
        (0.95, r"no smaller round_to reaches it: even without rounding at most 0\.8666"),
        (0.5, r"round_to=2 reaches it"),  # a keeps 2 (-4 weights), b 4 (-24): 32 of 60 go
    ],
)
def test_unreachable_global_sparsity_names_the_highest_reachable(sparsity, hint):
    """Only a's 2 and b's 4 lowest filters can go (28 of 60 weights): 0.95 is out of reach,
    and so is 0.5 (budget 30), although it is within one chunk of what can go."""
    template, scores = _two_layers()
    match = rf"sparsity={sparsity} .*round_to=4.* at most 0\.4666 .*\({hint}"
    with pytest.raises(ConfigError, match=match):
        select_topk(scores, template, sparsity=sparsity, scope="global", round_to=4)


def test_the_highest_reachable_sparsity_it_names_is_accepted():
    """The printed maximum is accepted (budget 27 of 60: b's chunk of 24 goes, a's 4 would
    overshoot), and the next step up (0.4834, budget 29 > 28) is refused."""
    template, scores = _two_layers()
    masks = select_topk(scores, template, sparsity=0.4666, scope="global", round_to=4)
    assert masks.total_weights() - masks.kept_weights() == 24
    check_achieved_sparsity(masks, 0.4666, "global")
    with pytest.raises(ConfigError, match="at most 0.4666"):
        select_topk(scores, template, sparsity=0.4834, scope="global", round_to=4)


def test_check_names_the_misaligned_block_and_its_counts():
    """Masks whose layer keeps 3 of 8 filters fail the round_to=4 check, by name."""
    template, scores = _two_layers()
    masks = select_topk(scores, template, sparsity=0.4, scope="global", round_to=4)
    b = masks["b"].clone()
    b[4] = 0.0  # b kept its best 4 (entries 4..7)
    broken = masks.with_tensors({"a": masks["a"], "b": b})
    with pytest.raises(
        SparsityCheckError, match=r"keep 3 of the 8 filters of 'b', neither a multiple"
    ):
        check_achieved_sparsity(broken, 0.4, "global")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, r"round_to=True must be an integer, not bool"),
        (0, r"round_to=0 must be >= 1"),
        (-3, r"round_to=-3 must be >= 1"),
        (2.5, r"round_to=2.5 must be an integer \(a whole number\)"),
        ("16", r"round_to='16' must be an integer, not str"),
    ],
)
def test_bad_round_to_values_are_config_errors(value, match):
    model, data = _mlp(), random_batches((12,), 3)
    with pytest.raises(ConfigError, match=match):
        sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filter", round_to=value)


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_round_to_needs_a_filter_channel_or_coupled_structure(structure):
    model, data = _mlp(), random_batches((12,), 3)
    with pytest.raises(ConfigError, match=rf"structure filter, channel, coupled, not structure='{structure}'"):  # fmt: skip # noqa: E501
        sfpk.prune(model, data, method="mag", sparsity=0.5, structure=structure, round_to=4)


def test_channel_masks_keep_aligned_input_widths():
    """Channel masks: each layer keeps a multiple of 4 input channels, or all of them."""
    model, data = _mlp(), random_batches((12,), 3)
    masks = sfpk.prune(
        model, data, method="mag", sparsity=0.5, structure="channel", scope="local", round_to=4
    )
    assert _kept(masks) == {"0.weight": 8, "2.weight": 12, "4.weight": 4}  # 12, 20, 10 inputs


def test_masks_file_keeps_round_to_and_is_checked_after_loading(tmp_path):
    model, data = _mlp(), random_batches((12,), 3)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filter", round_to=4)
    path = masks.save(tmp_path / "masks.safetensors")
    assert read_mask_file(path)[1]["round_to"] == 4  # the file's own JSON header
    loaded = Masks.load(path, model)
    assert loaded.round_to == 4
    check_achieved_sparsity(loaded, 0.5, "global")
    name = next(n for n in loaded if int(torch.count_nonzero(loaded[n])) < loaded[n].numel())
    mask = loaded[name].clone()
    mask.view(-1)[torch.nonzero(mask.reshape(-1))[0]] = 0.0  # one more filter goes
    broken = loaded.with_tensors({**loaded, name: mask})
    with pytest.raises(SparsityCheckError, match=name):
        check_achieved_sparsity(broken, 0.5, "global")


def test_iterative_rounds_keep_pruned_filters_and_stay_aligned():
    """A second round starts from the first's masks: its zeros stay, widths stay aligned."""
    model, data = _mlp(), random_batches((12,), 3)
    options = {"method": "snip", "structure": "filter", "round_to": 4, **tiny_options("snip")}
    first = sfpk.prune(model, data, sparsity=0.3, **options)
    second = sfpk.prune(model, data, sparsity=0.6, masks=first, **options)
    for name in first:
        assert bool(((first[name] == 0) <= (second[name] == 0)).all()), name
        assert int(torch.count_nonzero(second[name])) in _allowed(second[name].numel(), 4)
    assert second.sparsity() > first.sparsity()


def test_unaligned_starting_masks_are_refused():
    model, data = _mlp(), random_batches((12,), 3)
    start = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter")
    assert int(torch.count_nonzero(start["0.weight"])) % 4  # 20 -> 14 filters, unaligned
    with pytest.raises(ConfigError, match=r"starting masks keep \d+ of the 20 filters of '0.weight'"):  # fmt: skip # noqa: E501
        sfpk.prune(model, data, method="mag", sparsity=0.6, masks=start, round_to=4)


# -- coupled channel groups of a CIFAR ResNet ----------------------------------------------


def _resnet20():
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = sfpk.models.create("resnet20", num_classes=10, input_shape=(3, 16, 16))
    data = random_batches((3, 16, 16), 10, count=2)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        for x, _ in data:
            model(x)
    return model.eval(), data


@pytest.mark.parametrize("scope", ["global", "local"])
def test_coupled_resnet20_slims_to_widths_that_are_multiples_of_8(scope):
    """Every conv of the slim ResNet-20 has a multiple of 8 channels, same outputs."""
    from sfpk.deploy.slim import slim_model

    model, data = _resnet20()
    masks = sfpk.prune(
        model, data, method="mag", sparsity=0.6, structure="coupled", scope=scope, round_to=8
    )
    small = slim_model(model, masks, data[0][0][:1])
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert all(c.in_channels % 8 == 0 for c in convs[1:])  # the stem reads 3 colours
    widths = {c.out_channels for c in convs}
    assert widths != {16, 32, 64} and min(widths) >= 8  # it did shrink, aligned
    masked = masks.apply(copy.deepcopy(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(data[1][0]), masked(data[1][0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["sfpk", "spode"])
def test_particle_methods_keep_coupled_resnet20_widths_aligned(method):
    """The particle methods' final vote goes through the aligned cut too: every coupled
    group keeps a multiple of 8 channels, and the slim model computes the masked one."""
    from sfpk.deploy.slim import slim_model

    model, data = _resnet20()
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.6, structure="coupled", round_to=8,
        **tiny_options(method),
    )  # fmt: skip
    assert masks.round_to == 8
    check_achieved_sparsity(masks, 0.6, "global")
    small = slim_model(model, masks, data[0][0][:1])
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert {c.out_channels for c in convs} != {16, 32, 64}
    masked = masks.apply(copy.deepcopy(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(data[1][0]), masked(data[1][0]), rtol=1e-4, atol=1e-5)


def test_coupled_resnet20_at_90_percent_with_round_to_16_is_out_of_reach():
    """Stage 1 (16 channels) cannot shrink and the others keep >= 16: the error names the
    highest reachable sparsity, computed here from the channel groups, before any work."""
    model, data = _resnet20()
    plain = sfpk.prune(model, data, method="mag", sparsity=0.5, structure="coupled")
    coupling = plain.coupling
    weights = coupling.group_weights(plain.shapes)
    first, removable = 0, 0.0
    for block in coupling.blocks:
        removable += max(0, block.groups - 16) * float(weights[first])
        first += block.groups
    reach = f"{math.floor(removable / plain.total_weights() * 1e4) / 1e4:.4f}"  # 0.6630
    kwargs = {"method": "mag", "sparsity": 0.9, "structure": "coupled", "round_to": 16}
    match = rf"sparsity=0.9 is out of reach with round_to=16: .* at most {reach} .*smaller round_to"
    with pytest.raises(ConfigError, match=match):
        check_pruning(model, data=data, **kwargs)  # the pipelines' dry run, before a folder
    with pytest.raises(ConfigError, match=match):
        sfpk.prune(model, data, **kwargs)


# -- the pipelines: YAML key and command-line flag -----------------------------------------


def _run(tmp_path, pipeline: str, extra: list[str], sparsity: float = 0.5) -> tuple[dict, Masks]:
    from conftest import tiny_flags

    out = tmp_path / "run"
    flags = [pipeline, *tiny_flags(pipeline), "--structure", "filter", "--sparsity", str(sparsity)]
    assert main([*flags, *extra, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert read_mask_file(out / "masks.safetensors")[1]["round_to"] == summary["round_to"]
    return summary, Masks.load(out / "masks.safetensors")


def test_round_to_flag_reaches_the_pruner_and_the_summary(tmp_path):
    """`sfpk oneshot --round-to 8` at 0.6: the 32-unit hidden layer (64 weights a filter)
    keeps 16 filters, where the plain cut keeps 13 (1228 of 2048 weights: 19 filters go)."""
    summary, masks = _run(tmp_path, "oneshot", ["--round-to", "8"], sparsity=0.6)
    assert summary["round_to"] == 8 and masks.round_to == 8
    assert masks.shapes == {"1.weight": (32, 64)}
    plain_kept = 32 - removal_count(32 * 64, 0.6) // 64
    assert plain_kept == 13
    assert [int(torch.count_nonzero(m)) for m in masks.values()] == [16]


def test_round_to_from_yaml_in_an_iterative_run(tmp_path):
    """`prune.round_to` in a recipe, two rounds: every round's masks are aligned."""
    (tmp_path / "recipe.yaml").write_text("prune:\n  round_to: 8\n  rounds: 2\n")
    extra = ["--config", str(tmp_path / "recipe.yaml"), "--round-epochs", "1"]
    summary, masks = _run(tmp_path, "iterative", extra)
    assert summary["round_to"] == 8 and masks.round_to == 8
    # 32 filters of 64 weights: round 1 (target 0.293) removes one chunk of 8, round 2 two
    assert summary["round_sparsities"] == [0.25, 0.5]
    assert [int(torch.count_nonzero(m)) for m in masks.values()] == [16]


# -- review fixes: reach, local scope, start masks, biases, files ---------------------------


def _wide_mlp() -> nn.Module:
    """12 -> 32 -> 3: one prunable block of 32 filters of 12 weights (384 weights)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize(
    ("round_to", "sparsity", "why"),
    [
        (32, 0.99, r"none can shrink"),
        (16, 0.99, r"at most 0\.5000 of the weights can go"),  # it was accepted: 0.5 achieved
        (16, 0.6, r"at most 0\.5000 of the weights can go"),
    ],
)
@pytest.mark.parametrize("scope", ["global", "local"])
def test_a_sparsity_beyond_every_removable_chunk_is_refused_in_both_scopes(
    round_to, sparsity, why, scope
):
    """Beyond what removing every chunk removes is an error, also within one chunk of it,
    and the hint never names a round_to that falls short (not even round_to=1 at 0.99)."""
    model, data = _wide_mlp(), random_batches((12,), 3)
    hint = (
        r"no smaller round_to reaches it: even without rounding at most 0\.9687"
        if sparsity == 0.99
        else r"round_to=8 reaches it"
    )
    with pytest.raises(ConfigError, match=rf"sparsity={sparsity} is out of reach .*{why}.*{hint}"):
        sfpk.prune(model, data, method="mag", sparsity=sparsity, structure="filter",
                   scope=scope, round_to=round_to)  # fmt: skip


def test_the_suggested_round_to_is_accepted_within_one_chunk():
    """0.8 with round_to=16 suggests round_to=4, which then lands within one chunk of 0.8."""
    model, data = _wide_mlp(), random_batches((12,), 3)
    kwargs = {"method": "mag", "sparsity": 0.8, "structure": "filter"}
    with pytest.raises(ConfigError, match=r"round_to=4 reaches it"):
        sfpk.prune(model, data, round_to=16, **kwargs)
    masks = sfpk.prune(model, data, round_to=4, **kwargs)
    assert abs(masks.sparsity() - 0.8) < 4 * 12 / 384
    assert int(torch.count_nonzero(masks["0.weight"])) % 4 == 0


def test_coupled_resnet20_refuses_a_sparsity_between_its_maximum_and_one_chunk_above():
    """0.76 with round_to=16 used to be accepted and give 0.6631 with a warning only."""
    model, data = _resnet20()
    kwargs = {"method": "mag", "structure": "coupled", "round_to": 16}
    with pytest.raises(ConfigError, match=r"at most 0\.6630 .*\(round_to=8 reaches it\)"):
        sfpk.prune(model, data, sparsity=0.76, **kwargs)
    masks = sfpk.prune(model, data, sparsity=0.663, **kwargs)
    assert masks.sparsity() <= 0.663 and masks.sparsity() > 0.6


def test_local_scope_refuses_a_target_its_rounding_cannot_approach():
    """ResNet-20 local, round_to=64: no channel group can shrink; it used to return dense
    masks (sparsity 0.0) that a pipeline would then fine-tune."""
    model, data = _resnet20()
    with pytest.raises(ConfigError, match=r"sparsity=0.9 is out of reach .*none can shrink"):
        sfpk.prune(model, data, method="mag", sparsity=0.9, structure="coupled",
                   scope="local", round_to=64)  # fmt: skip


def test_local_rounding_that_lands_more_than_one_chunk_short_is_an_error():
    """Ten layers of 20 filters, round_to=16, 0.1: every layer wants 18 and keeps 20 (the
    nearer width), so nothing goes: refused as a call's target (before any work); a
    selection at it only rounds; global removes whole chunks and reaches it."""
    shapes = {f"l{i}": (20, 1) for i in range(10)}
    template = Masks({n: torch.ones(20, 1) for n in shapes}, shapes=shapes, structure="filter")
    scores = {n: torch.rand(20, 1) for n in shapes}
    with pytest.raises(ConfigError, match=r"scope local moves every block .* removes 0\.0000 .*use scope global"):  # fmt: skip # noqa: E501
        check_reachable(template, 0.1, "local", 16)
    rounded = select_topk(scores, template, sparsity=0.1, scope="local", round_to=16)
    assert rounded.kept_weights() == rounded.total_weights()
    check_achieved_sparsity(rounded, 0.1, "local")  # the counts of the rule, no shortfall test
    masks = select_topk(scores, template, sparsity=0.1, scope="global", round_to=16)
    assert masks.total_weights() - masks.kept_weights() == 20  # 5 chunks of 4 filters
    check_achieved_sparsity(masks, 0.1, "global")


def test_local_scope_keeps_its_nearest_width_within_reach():
    """The documented local rounding is unchanged where it gets near the target."""
    model, data = _mlp(), random_batches((12,), 3)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filter",
                       scope="local", round_to=4)  # fmt: skip
    assert _kept(masks) == {"0.weight": 12, "2.weight": 4}


def test_the_starting_masks_round_to_is_the_default():
    """A second call with masks=first and no round_to keeps first's aligned widths."""
    model, data = _mlp(), random_batches((12,), 3)
    first = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter", round_to=4)
    second = sfpk.prune(model, data, method="mag", sparsity=0.6, masks=first)
    assert second.round_to == 4
    for name, mask in second.items():
        assert int(torch.count_nonzero(mask)) in _allowed(mask.numel(), 4), name
    check_achieved_sparsity(second, 0.6, "global")


def test_a_round_to_that_does_not_keep_the_starting_masks_one_is_refused():
    """Widths aligned to 4 are not aligned to 8 or 3; they are to 2 (test_round_to_rounds).
    round_to=1 (no rounding) is refused too: the plain cut's counts differ from the aligned
    start's, so the call used to fail only in the check after the work."""
    model, data = _mlp(), random_batches((12,), 3)
    first = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter", round_to=4)
    for value in (8, 3, 1):
        with pytest.raises(ConfigError, match=rf"round_to={value} does not keep the starting masks' round_to=4"):  # fmt: skip # noqa: E501
            sfpk.prune(model, data, method="mag", sparsity=0.6, masks=first, round_to=value)
    local = sfpk.prune(
        model, data, method="mag", sparsity=0.5, structure="filter", scope="local", round_to=4
    )
    with pytest.raises(ConfigError, match="round_to=1 does not keep"):
        sfpk.prune(model, data, method="mag", sparsity=0.55, scope="local", masks=local, round_to=1)


def test_unaligned_starting_masks_are_accepted_when_their_zeros_may_revive():
    """SpODE with revive_pruned=True ignores the start's zeros, so they need no alignment."""
    model, data = _mlp(), random_batches((12,), 3)
    start = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter")
    assert int(torch.count_nonzero(start["0.weight"])) % 4  # 18 of 20 filters
    options = {"method": "spode", "sparsity": 0.5, "masks": start, "round_to": 4,
               **tiny_options("spode")}  # fmt: skip
    masks = sfpk.prune(model, data, revive_pruned=True, **options)
    assert masks.round_to == 4
    for name, mask in masks.items():
        assert int(torch.count_nonzero(mask)) in _allowed(mask.numel(), 4), name
    with pytest.raises(ConfigError, match=r"starting masks keep 18 of the 20 filters"):
        sfpk.prune(model, data, **options)  # the zeros stay: they must be aligned


@pytest.mark.parametrize("scope", ["global", "local"])
def test_included_biases_follow_their_layer_filters(scope):
    """include_bias=True: each bias keeps exactly its layer's kept filters (it used to be a
    block of its own, rounded apart), and counts with them in the sparsity."""
    model, data = _mlp(), random_batches((12,), 3)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filter",
                       scope=scope, include_bias=True, round_to=4)  # fmt: skip
    assert set(masks) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for layer in ("0", "2"):
        weight, bias = masks[f"{layer}.weight"].reshape(-1), masks[f"{layer}.bias"]
        assert torch.equal(weight, bias), layer
        assert int(torch.count_nonzero(weight)) in _allowed(weight.numel(), 4)
    check_achieved_sparsity(masks, 0.5, scope)
    broken = masks["0.bias"].clone()
    broken[torch.nonzero(broken)[0]] = 0.0
    with pytest.raises(SparsityCheckError, match=r"bias mask '0.bias' differs"):
        check_achieved_sparsity(masks.with_tensors({**masks, "0.bias": broken}), 0.5, scope)


def test_included_biases_with_channel_masks_are_refused():
    """Channel masks decide input channels; a bias belongs to the outputs: no rule to follow."""
    model, data = _mlp(), random_batches((12,), 3)
    with pytest.raises(ConfigError, match=r"1-D mask\(s\) 0.bias, 2.bias, 4.bias have no"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, structure="channel",
                   include_bias=True, round_to=4)  # fmt: skip


def test_check_achieved_sparsity_is_still_importable_from_selection():
    """The check sits beside select_topk, whose counting rules it re-derives from the masks."""
    from sfpk.selection import topk

    assert topk.check_achieved_sparsity.__module__ == "sfpk.selection.topk"
    assert "check_achieved_sparsity" in topk.__all__


@pytest.mark.parametrize("value", ["16", 0, 2.5, True])
def test_a_bad_round_to_in_a_mask_file_header_is_refused_on_load(tmp_path, value):
    from sfpk.errors import CheckpointError
    from sfpk.masks.files import write_mask_file

    model, data = _mlp(), random_batches((12,), 3)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filter", round_to=4)
    path = write_mask_file(tmp_path / "m.safetensors", dict(masks),
                           {**masks.header(), "round_to": value})  # fmt: skip
    with pytest.raises(CheckpointError, match=rf"m.safetensors.*round_to={value!r}"):
        Masks.load(path)


def test_max_sparsity_is_the_accepted_boundary():
    """max_sparsity: accepted, and a global cut at it removes every removable chunk (28 of
    60 weights); one weight more is refused."""
    from sfpk.selection.aligned import max_sparsity

    template, scores = _two_layers()
    top = max_sparsity(template, 4)
    assert top == pytest.approx(28 / 60)
    masks = select_topk(scores, template, sparsity=top, scope="global", round_to=4)
    assert masks.total_weights() - masks.kept_weights() == 28
    with pytest.raises(ConfigError, match="out of reach"):
        select_topk(scores, template, sparsity=29 / 60, scope="global", round_to=4)
