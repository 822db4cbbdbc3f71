"""N:M semi-structured masks: every group of M along the input dimension keeps exactly N."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from helpers import tiny_options
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks
from sfpk.masks.prunable import check_structure, parse_nm
from sfpk.selection.cuts import nm_cut


def _net() -> nn.Module:
    """Linear layers whose inputs (8, 8) are multiples of 4 and 8, a conv with 8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1),  # 2 input channels: no N:M mask
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 2, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen))
        for _ in range(3)
    ]


def _kept_per_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    return (mask != 0).movedim(1, -1).reshape(-1, m).sum(1)


@pytest.mark.parametrize("method", sfpk.methods())
def test_every_method_keeps_exactly_n_of_every_m(method):
    """The 2:4 pattern holds in every group of every masked tensor, for every method."""
    masks = sfpk.prune(
        _net(), _data(), method=method, sparsity=0.5, structure="2:4", **tiny_options(method)
    )
    assert list(masks) == ["2.weight", "5.weight", "7.weight"]
    for name, mask in masks.items():
        assert bool((_kept_per_group(mask, 4) == 2).all()), name


@pytest.mark.parametrize("structure, sparsity", [("1:4", 0.75), ("3:8", 0.625)])
def test_general_n_m(structure, sparsity):
    """Any N:M with 0 < N < M: the groups keep exactly N."""
    n, m = parse_nm(structure)
    masks = sfpk.prune(_net(), _data(), method="mag", sparsity=sparsity, structure=structure)
    for mask in masks.values():
        assert bool((_kept_per_group(mask, m) == n).all())


def test_nm_cut_keeps_the_largest_of_each_group():
    """Within a group the N largest scores stay; groups run along dim 1 of the tensor."""
    values = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 9.0, 8.0, 7.0]])
    keep = nm_cut(values.reshape(-1), (2, 4), 4, 0.5).reshape(2, 4)
    assert keep.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0]]
    conv = torch.arange(16.0).reshape(1, 4, 4)  # [out, in, k]: groups across the 4 inputs
    keep = nm_cut(conv.reshape(-1), (1, 4, 4), 4, 0.5).reshape(1, 4, 4)
    assert keep[0, :, 0].tolist() == [0, 0, 1, 1]


def test_sfpk_hard_vote_respects_the_pattern():
    """Each particle's hard-voted score is already N:M, so the vote cannot break it."""
    steps: list[dict] = []
    sfpk.run_pruner(
        _net(), _data(), method="sfpk", sparsity=0.5, structure="2:4", vote="hard",
        num_steps=3, num_particles=2, observer=sfpk.PruneObserver(trace=steps.append),
    )  # fmt: skip
    shapes = {"2.weight": (8, 8, 3), "5.weight": (8, 64), "7.weight": (3, 8)}
    for step in steps:
        for voted in step["scores_voted"].values():
            start = 0
            for shape in shapes.values():
                size = int(torch.tensor(shape).prod())
                chunk = voted[start : start + size].reshape(shape)
                assert bool((_kept_per_group(chunk, 4) <= 2).all())
                start += size


def test_sparsity_must_match_the_pattern():
    """2:4 removes half the weights; asking for 0.9 is an error, not a silent 0.5."""
    with pytest.raises(ConfigError, match="sparsity=0.5"):
        sfpk.prune(_net(), _data(), method="mag", sparsity=0.9, structure="2:4")


@pytest.mark.parametrize("bad", ["4:4", "0:4", "2-4", "x:y"])
def test_bad_patterns_are_named(bad):
    """Malformed or impossible patterns are rejected before any work."""
    with pytest.raises(ConfigError):
        check_structure(bad)


def test_no_eligible_weight_is_an_error():
    """A model whose inputs are never a multiple of M cannot get N:M masks."""
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ConfigError, match="multiple of M"):
        Masks.ones(model, structure="2:4")


def test_nm_masks_survive_save_and_load(tmp_path):
    """The pattern name is stored in the file header and restored."""
    model = _net()
    masks = sfpk.prune(model, _data(), method="mag", sparsity=0.5, structure="2:4")
    path = masks.save(tmp_path / "m.safetensors")
    loaded = sfpk.load_masks(path, model)
    assert loaded.structure == "2:4"
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_config_accepts_an_nm_structure():
    """--structure 2:4 is a valid configuration (with --sparsity 0.5)."""
    config = sfpk.build_config(
        "oneshot", overrides={"prune.structure": "2:4", "prune.sparsity": 0.5}
    )
    assert config.prune.structure == "2:4"
    with pytest.raises(ConfigError):
        sfpk.build_config("oneshot", overrides={"prune.structure": "2:x"})
