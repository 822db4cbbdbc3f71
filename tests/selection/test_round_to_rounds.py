"""round_to across rounds: the reach rule is the final target's, lower targets only round;
the maxima it names are accepted in their scope; starting masks, mask files and reports."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from torch import nn

import sfpk
from helpers import random_batches, tiny_options
from sfpk.api import run_pruner
from sfpk.cli import main
from sfpk.errors import CheckpointError, ConfigError
from sfpk.masks.core import Masks
from sfpk.masks.files import write_mask_file
from sfpk.pipelines.report import load_summaries, summarize_runs
from sfpk.selection.aligned import check_reachable, max_sparsity
from sfpk.selection.topk import check_achieved_sparsity, round_sparsity

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _mlp() -> nn.Module:
    """64 -> 32 -> 32 -> 10: two filter blocks of 32 (the output layer stays unpruned)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _kept(masks: Masks) -> dict[str, int]:
    return {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}


LOCAL = {"structure": "filter", "scope": "local", "round_to": 4}


# -- intermediate targets only round ---------------------------------------------------------


@pytest.mark.parametrize("rounds", [3, 100])
def test_synflow_local_inner_rounds_only_round(rounds):
    """SynFlow's inner rounds select at lower targets (0.2116 of 0.3 with 3 rounds), where
    local rounding lands more than a chunk short; they used to raise mid-call."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    masks = sfpk.prune(model, data, method="synflow", sparsity=0.3, rounds=rounds, **LOCAL)
    assert masks.sparsity() == pytest.approx(0.25)  # every block 32 -> 24
    check_achieved_sparsity(masks, 0.3, "local")


def test_a_round_of_a_schedule_is_not_refused_for_landing_short():
    """run_pruner(final_sparsity=0.3) at round target 0.2116: rounded, not refused; the
    same target as a call's final one is refused before any work, naming it."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    first = sfpk.prune(model, data, method="mag", sparsity=0.1121, **LOCAL)
    result = run_pruner(model, data, method="mag", sparsity=0.2116, masks=first,
                        final_sparsity=0.3, **LOCAL)  # fmt: skip
    assert _kept(result.masks) == _kept(first)  # 28 is nearer 28 than 24: nothing moves
    with pytest.raises(ConfigError, match=r"sparsity=0.2116 is out of reach .*scope local"):
        sfpk.prune(model, data, method="mag", sparsity=0.2116, masks=first, **LOCAL)


def test_a_final_sparsity_below_the_round_target_is_refused():
    model, data = _mlp(), random_batches((64,), 10, count=1)
    with pytest.raises(ConfigError, match=r"final_sparsity=0.2 is below this round's sparsity=0.3"):
        run_pruner(model, data, method="mag", sparsity=0.3, final_sparsity=0.2, **LOCAL)


def test_an_unreachable_final_target_is_refused_in_every_round():
    """The reach rule is the final target's, also when a round's own target would pass."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    with pytest.raises(ConfigError, match=r"sparsity=0.95 is out of reach .*at most"):
        run_pruner(model, data, method="mag", sparsity=0.3, final_sparsity=0.95, **LOCAL)


def test_iterative_pipeline_with_local_round_to_runs_every_round(tmp_path):
    """Three rounds to 0.3 (0.1121, 0.2116, 0.3): round 2 used to fail after pretraining."""
    from conftest import tiny_flags

    flags = tiny_flags("iterative")
    flags[flags.index("hidden=[32]")] = "hidden=[32,32]"
    flags[flags.index("--sparsity") + 1] = "0.3"
    out = tmp_path / "run"
    assert main(["iterative", *flags, "--structure", "filter", "--scope", "local",
                 "--round-to", "4", "--rounds", "3", "--round-epochs", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["round_sparsities"]) == 3 and summary["round_to"] == 4
    masks = Masks.load(out / "masks.safetensors")
    check_achieved_sparsity(masks, 0.3, "local")


def test_a_lower_target_passes_wherever_the_final_one_does():
    """Why the dry run checks the final target only: the reach test left at lower targets
    (budget within what every block at its floor removes) holds below any accepted one."""
    rng = random.Random(0)
    for _ in range(150):
        widths = [rng.randint(1, 48) for _ in range(rng.randint(1, 4))]
        layers, previous = [], rng.randint(1, 9)
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        template = Masks.ones(nn.Sequential(*layers), structure="filter")
        k, scope = rng.choice([2, 4, 8, 16]), rng.choice(["global", "local"])
        sparsity, rounds = rng.uniform(0.01, 0.99), rng.randint(2, 6)
        try:
            check_reachable(template, sparsity, scope, k)
        except ConfigError:
            continue
        for index in range(rounds):
            target = round_sparsity(sparsity, index, rounds)
            check_reachable(template, target, scope, k, shortfall=False)


# -- overshooting and misfit starting masks ---------------------------------------------------


def test_local_start_that_overshoots_a_later_target_keeps_its_masks():
    """Five rounds to 0.3 with round_to=8: round 2 rounds to 0.25, above round 3's 0.2482;
    round 3 used to fail ("starting masks already remove"); it keeps the start's widths."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    options = {"method": "mag", "structure": "filter", "scope": "local", "round_to": 8}
    masks = None
    for index in range(5):
        target = round_sparsity(0.3, index, 5)
        before = masks
        masks = run_pruner(model, data, sparsity=target, masks=masks, final_sparsity=0.3,
                           **options).masks  # fmt: skip
        if index == 3:
            assert before is not None and before.sparsity() > target
            assert all(torch.equal(masks[n], before[n]) for n in masks)
    assert masks.sparsity() == pytest.approx(0.25)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_an_overshooting_start_whose_zeros_may_revive_is_accepted(scope):
    """SpODE with revive_pruned: the start's zeros do not bind the cut, so a start that
    local rounding took past the target (0.25 > 0.2482) is no reason to refuse."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    start = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter",
                       scope="local", round_to=8)  # fmt: skip
    assert start.sparsity() == pytest.approx(0.25)
    masks = sfpk.prune(model, data, method="spode", sparsity=0.2482, masks=start, scope=scope,
                       revive_pruned=True, **tiny_options("spode"))  # fmt: skip
    assert masks.round_to == 8
    check_achieved_sparsity(masks, 0.2482, scope)


def test_global_start_that_overshoots_is_refused_before_any_work():
    """Global cuts stay within their budget, so only a start cut otherwise can overshoot."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    start = sfpk.prune(model, data, method="mag", sparsity=0.3, **LOCAL)  # 0.25 removed
    with pytest.raises(ConfigError, match=r"starting masks already remove 0.2500"):
        sfpk.prune(model, data, method="mag", sparsity=0.22, masks=start, structure="filter",
                   scope="global", round_to=4)  # fmt: skip


def test_local_start_with_a_block_below_the_local_count_is_refused_before_any_work():
    """A global start that emptied one block to 4 of 32: local at 0.3 keeps 24 there."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    shapes = {"0.weight": (32, 64), "2.weight": (32, 32)}
    start = Masks({n: torch.ones(32, 1) for n in shapes}, shapes=shapes, structure="filter",
                  round_to=4)  # fmt: skip
    start = start.with_tensors({**start, "2.weight": (torch.arange(32) < 4).float()[:, None]})
    with pytest.raises(ConfigError, match=r"keep 4 of the 32 filters of '2.weight', fewer than scope local keeps at sparsity=0.3 \(24\)"):  # fmt: skip # noqa: E501
        sfpk.prune(model, data, method="mag", sparsity=0.3, masks=start, **LOCAL)


def test_the_hint_with_starting_masks_names_a_round_to_they_accept():
    """Round 2 at 0.2116 from masks aligned to 4 suggests round_to=2, which a start aligned
    to 4 is aligned to: following the hint is accepted and keeps widths of multiples of 2."""
    model, data = _mlp(), random_batches((64,), 10, count=1)
    first = sfpk.prune(model, data, method="mag", sparsity=0.1121, **LOCAL)
    with pytest.raises(ConfigError, match=r"\(round_to=2 reaches it\)"):
        sfpk.prune(model, data, method="mag", sparsity=0.2116, masks=first, scope="local")
    second = sfpk.prune(model, data, method="mag", sparsity=0.2116, masks=first, scope="local",
                        round_to=2)  # fmt: skip
    assert second.round_to == 2 and all(v % 2 == 0 for v in _kept(second).values())
    check_achieved_sparsity(second, 0.2116, "local")


# -- max_sparsity and the figure the error names ---------------------------------------------


def _templates():
    yield "mlp", Masks.ones(_mlp(), structure="filter", exclude=["4.*"])
    torch.manual_seed(1)
    wide = nn.Sequential(nn.Linear(9, 40), nn.ReLU(), nn.Linear(40, 21), nn.ReLU(),
                         nn.Linear(21, 7), nn.ReLU(), nn.Linear(7, 3))  # fmt: skip
    yield "uneven", Masks.ones(wide, structure="filter", include_bias=True)
    yield "channel", Masks.ones(wide, structure="channel")


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("k", [2, 4, 8, 16])
def test_max_sparsity_and_the_named_maximum_are_accepted_in_their_scope(k, scope):
    """max_sparsity(masks, k, scope) passes that scope's reach rule, what lies above it
    (one weight more; local: the 0.0001 grid up to global's maximum) does not, and the
    "at most X" of an error in that scope is accepted there."""
    for name, template in _templates():
        top = max_sparsity(template, k, scope)
        if top <= 0:
            continue
        check_reachable(template, top, scope, k)
        total = template.total_weights()
        if scope == "global":  # one weight more than every block at its floor removes
            above = [(round(top * total) + 1) / total]
        else:  # the grid steps above it, up to the global maximum
            last = math.floor(max_sparsity(template, k) * 10**4 + 1e-9)
            above = [step / 10**4 for step in range(round(top * 10**4) + 1, last + 1)]
        for sparsity in above[:40]:
            with pytest.raises(ConfigError):
                check_reachable(template, sparsity, scope, k)
        beyond = min(max_sparsity(template, k) + 0.01, 0.999)
        with pytest.raises(ConfigError) as info:
            check_reachable(template, beyond, scope, k)
        named = re.search(r"at most (\d\.\d+) of the weights can go; ask", str(info.value))
        assert named is not None, (name, str(info.value))
        check_reachable(template, float(named.group(1)), scope, k)


def test_coupled_resnet20_local_maximum_is_below_the_global_one_and_accepted():
    """ResNet-20 coupled, round_to=4: 0.9157 is global's maximum; local rounding refuses it
    and names its own (0.8944 at 32x32), which it accepts."""
    pytest.importorskip("torch_pruning")
    from sfpk.deploy.channel_groups import coupled_channel_masks

    model = sfpk.models.create("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    template = coupled_channel_masks(model, torch.zeros(1, 3, 32, 32))
    top_global, top_local = max_sparsity(template, 4), max_sparsity(template, 4, "local")
    assert top_local < top_global
    with pytest.raises(ConfigError, match=rf"at most {top_local:.4f} of the weights can go"):
        check_reachable(template, 0.95, "local", 4)
    check_reachable(template, top_local, "local", 4)


@pytest.mark.parametrize(
    ("round_to", "structure", "scope", "match"),
    [
        (0, "filter", "global", r"round_to=0 must be >= 1"),
        (-3, "filter", "global", r"round_to=-3 must be >= 1"),
        (4, "unstructured", "global", r"round_to=4 .* needs structure filter, channel"),
        (4, "filter", "row", r"unknown scope 'row'; choose one of: global, local"),
    ],
)
def test_max_sparsity_checks_its_arguments(round_to, structure, scope, match):
    """It used to return 1.0 for round_to=0 and 1.5 for -3."""
    model = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 3))
    with pytest.raises(ConfigError, match=match):
        max_sparsity(Masks.ones(model, structure=structure), round_to, scope)


# -- mask files -------------------------------------------------------------------------------


def test_a_mask_file_with_round_to_its_structure_cannot_carry_is_refused(tmp_path):
    model, data = _mlp(), random_batches((64,), 10, count=1)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.5)  # unstructured
    path = write_mask_file(tmp_path / "m.safetensors", dict(masks),
                           {**masks.header(), "round_to": 4})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"m.safetensors.*round_to=4 .*needs structure filter, channel, coupled, not the file's structure='unstructured'"):  # fmt: skip # noqa: E501
        Masks.load(path)
    write_mask_file(path, dict(masks), {**masks.header(), "round_to": 1})
    assert Masks.load(path).round_to == 1  # 1 is no rounding: any structure


# -- reports of older runs --------------------------------------------------------------------


def _run(root, name, summary, config=None):
    run = root / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (run / "config.yaml").write_text(config)
    return run


BASE = {"pipeline": "oneshot", "dataset": "digits", "model": "mlp", "method": "mag",
        "sparsity": 0.9, "final_test_acc": 0.8}  # fmt: skip
DENSE = {"pipeline": "pretrain", "dataset": "digits", "model": "mlp", "method": None,
         "sparsity": None, "final_test_acc": 0.95, "seed": 0}  # fmt: skip


def test_report_reads_old_runs_settings_from_their_config(tmp_path):
    """A summary without structure/scope/round_to takes them from config.yaml, so it joins
    the identical new runs; scope None is the method's; the dense row has no settings."""
    runs = [
        _run(tmp_path, "old", {**BASE, "seed": 0},
             "prune:\n  method: mag\n  structure: unstructured\n  scope: null\n"),
        _run(tmp_path, "new", {**BASE, "seed": 1, "structure": "unstructured",
                               "scope": "global", "round_to": None}),
        _run(tmp_path, "filter", {**BASE, "seed": 2},
             "prune:\n  structure: filter\n  scope: local\n  round_to: 8\n"),
        _run(tmp_path, "dense", DENSE),
    ]  # fmt: skip
    rows = {r["method"]: r for r in summarize_runs(load_summaries(runs))}
    assert {m: r["seeds"] for m, r in rows.items()} == {
        "dense": [0],
        "mag (unstructured global round_to=1)": [0, 1],
        "mag (filter local round_to=8)": [2],
    }
    assert [rows["dense"][k] for k in ("structure", "scope", "round_to")] == [None] * 3


def test_report_without_config_takes_the_defaults_and_treats_round_to_one_as_none():
    """Old summaries with no folder: unstructured and the method's scope (wanda: row);
    round_to 1 and None are one setting, and no row gets a label for it."""
    runs = [
        {**BASE, "seed": 0, "_run_dir": "a"},
        {**BASE, "seed": 1, "structure": "unstructured", "scope": "global", "round_to": 1,
         "_run_dir": "b"},
        {**BASE, "seed": 2, "method": "wanda", "_run_dir": "c"},
        {**BASE, "seed": 3, "method": "wanda", "scope": "row", "round_to": None, "_run_dir": "d"},
        {**DENSE, "_run_dir": "e"},
    ]  # fmt: skip
    rows = {r["method"]: r for r in summarize_runs(runs)}
    assert {m: r["seeds"] for m, r in rows.items()} == {
        "dense": [0],
        "mag (global)": [0, 1],
        "wanda (row)": [2, 3],
    }
    assert rows["mag (global)"]["round_to"] is None
