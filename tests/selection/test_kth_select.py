"""The bracketed k-th smallest: always the exact value a sort gives, whatever the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfpk.selection.kth_select import _bracketed, _sample_stride, kth_smallest, select_kth


def _sorted_kth(array: np.ndarray, k: int) -> float:
    return float(np.sort(array)[k - 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [10, 4096, 78_858])
def test_select_kth_equals_the_sorted_value_for_every_rank_class(dtype, size):
    """Thresholds must not move: the value is the sort's k-th for low, middle, high k."""
    rng = np.random.default_rng(size)
    array = (np.abs(rng.standard_normal(size)) * rng.random(size)).astype(dtype)
    for k in sorted({1, 2, size // 10, size // 2, (9 * size) // 10, size - 1, size}):
        assert float(select_kth(array, k)) == _sorted_kth(array, k)


def test_select_kth_is_exact_with_heavy_ties():
    """Pruned entries score exactly 0: a bracket made of ties must still give the k-th."""
    rng = np.random.default_rng(1)
    array = rng.random(50_000).astype(np.float32)
    array[rng.permutation(50_000)[:30_000]] = 0.0
    for k in (1, 29_999, 30_000, 30_001, 49_999):
        assert float(select_kth(array, k)) == _sorted_kth(array, k)


def test_select_kth_ranks_nan_last_like_a_sort():
    """NaN in the scores ranks above every number, as in torch.sort and np.partition."""
    rng = np.random.default_rng(2)
    array = rng.random(20_000)
    array[rng.permutation(20_000)[:500]] = np.nan
    assert float(select_kth(array, 19_000)) == _sorted_kth(array, 19_000)
    assert math.isnan(float(select_kth(array, 19_800)))


def test_a_missed_bracket_falls_back_to_the_whole_array():
    """A sample that misrepresents the data (every sampled entry huge) still gives the
    exact value, through the full partition."""
    size = 40_000
    array = np.linspace(0.0, 1.0, size)
    array[:: _sample_stride(size)] = 1e9  # the sample sees only these
    k = size // 2
    assert _bracketed(array, k) is None
    assert float(select_kth(array, k)) == _sorted_kth(array, k)


def test_select_kth_rejects_a_rank_out_of_range():
    """k is 1-based and at most the size; 0 would silently read the wrong end."""
    with pytest.raises(ValueError, match="k=0"):
        select_kth(np.ones(5), 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_smallest_agrees_with_torch_kthvalue(dtype):
    """The CPU numpy path returns what torch.kthvalue (the accelerator path) returns."""
    values = torch.rand(30_000, generator=torch.Generator().manual_seed(3), dtype=dtype)
    for k in (1, 7_000, 30_000):
        got = kth_smallest(values, k)
        assert got.dtype == dtype
        assert float(got) == float(torch.kthvalue(values, k).values)
