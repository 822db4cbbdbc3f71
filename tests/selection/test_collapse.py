"""The collapse guard: extreme sparsity never disconnects a layer, counts stay exact."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sfpk
from helpers import model_and_batches, tiny_options
from sfpk.masks.core import Masks
from sfpk.selection.collapse import protected_entries
from sfpk.selection.topk import select_topk


def _two_layer_template() -> Masks:
    return Masks(
        {"a.weight": torch.ones(2, 3), "b.weight": torch.ones(2, 4)},
        shapes={"a.weight": (2, 3), "b.weight": (2, 4)},
    )


def _layer_a_lowest() -> dict[str, torch.Tensor]:
    """Scores that make a plain global cut remove all of layer a."""
    return {"a.weight": torch.full((2, 3), 0.1), "b.weight": torch.arange(1.0, 9.0).view(2, 4)}


def test_without_the_guard_a_layer_can_vanish():
    """The failure the guard exists for: a global cut empties layer a entirely."""
    masks = select_topk(_layer_a_lowest(), _two_layer_template(), sparsity=0.6)
    assert int(masks["a.weight"].sum()) == 0


@pytest.mark.parametrize("guard", ["row", "layer"])
def test_the_guard_keeps_layers_connected_with_the_exact_count(guard):
    """Every row (or layer) keeps a weight, and exactly floor(s*P) are still removed."""
    masks = select_topk(_layer_a_lowest(), _two_layer_template(), sparsity=0.6, guard=guard)
    kept_rows = masks["a.weight"].sum(1)
    assert bool((kept_rows >= 1).all()) if guard == "row" else int(kept_rows.sum()) >= 1
    assert masks.total_weights() - masks.kept_weights() == int(0.6 * 14)
    assert masks.collapse_guard["mode"] == guard
    assert masks.collapse_guard["rescued"] == {"a.weight": 2 if guard == "row" else 1}


def test_the_guard_changes_nothing_when_nothing_collapses():
    """Bit-identical masks when every protected entry would survive anyway."""
    scores = {"a.weight": torch.arange(6.0).view(2, 3), "b.weight": torch.arange(8.0).view(2, 4)}
    plain = select_topk(scores, _two_layer_template(), sparsity=0.3)
    guarded = select_topk(scores, _two_layer_template(), sparsity=0.3, guard="row")
    assert all(torch.equal(plain[n], guarded[n]) for n in plain)
    assert guarded.collapse_guard == {"requested": "row", "mode": "row", "rescued": {}}


def test_row_guard_falls_back_to_layers_when_rows_do_not_fit():
    """Keeping 2 weights cannot cover 4 rows: one per layer instead."""
    flat = torch.arange(14.0)
    picks, mode = protected_entries(flat, [(2, 3), (2, 4)], [2], "row")
    assert mode == "layer" and picks.tolist() == [5, 13]
    _, mode = protected_entries(flat, [(2, 3), (2, 4)], [1], "row")
    assert mode == "off"


def test_rows_already_pruned_are_not_revived():
    """A row emptied by an earlier round stays empty: pruned entries never come back."""
    template = _two_layer_template()
    start = template.with_tensors(
        {"a.weight": torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), "b.weight": torch.ones(2, 4)}
    )
    masks = select_topk(_layer_a_lowest(), start, sparsity=0.6, guard="row")
    assert masks["a.weight"][0].sum() == 0 and masks["a.weight"][1].sum() >= 1


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_layer_stays_connected_at_0999_for_every_method(method):
    """The default guard of sfpk.prune: no weight tensor loses all its weights.

    26k weights keep 26 at 0.999: enough for one per layer (not one per row).
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    data = [(torch.randn(16, 64), torch.randint(0, 10, (16,))) for _ in range(3)]
    masks = sfpk.prune(
        model, data, method=method, sparsity=0.999, scope="global", **tiny_options(method)
    )
    for name, mask in masks.items():
        assert int(mask.sum()) >= 1, name
    assert masks.collapse_guard["mode"] == "layer"


def test_an_impossible_guard_is_reported():
    """Fewer kept weights than layers: nothing can keep every layer; the report says so."""
    model, data = model_and_batches("conv_bn", count=2)
    masks = sfpk.prune(model, data, method="mag", sparsity=0.999)
    assert masks.collapse_guard["mode"] == "off"
    assert masks.collapse_guard["requested"] == "row"


def test_guard_off_is_the_reference_behaviour():
    """collapse_guard='off' gives the unguarded masks (what the golden tests compare)."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    data = [(torch.randn(5, 6), torch.randint(0, 3, (5,)))]
    masks = sfpk.prune(model, data, method="mag", sparsity=0.95, collapse_guard="off")
    assert masks.collapse_guard["mode"] == "off"


def test_the_report_survives_save_and_load(tmp_path):
    """Whether the guard acted is part of the mask file's provenance."""
    masks = select_topk(_layer_a_lowest(), _two_layer_template(), sparsity=0.6, guard="row")
    loaded = Masks.load(masks.save(tmp_path / "m.safetensors"))
    assert loaded.collapse_guard == masks.collapse_guard


def test_bad_guard_is_rejected():
    """An unknown guard name is an error naming the choices."""
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.UnknownNameError, match="collapse_guard"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, collapse_guard="rows")


def test_the_guard_report_reaches_summary_json(tmp_path):
    """A pipeline run records, per round, what the guard did."""
    from conftest import TINY_FLAGS
    from sfpk.cli import main

    out = tmp_path / "run"
    flags = ["--method", "mag", "--sparsity", "0.999", "--out", str(out)]
    assert main(["oneshot", *TINY_FLAGS, *flags]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["collapse_guard"][0]["mode"] in ("row", "layer")
    assert summary["collapse_guard"][0]["rescued"]
