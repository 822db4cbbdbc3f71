"""Golden case E: Mag, SNIP, GraSP and SynFlow agree with the reference implementation.

The vectors live in ``tests/golden`` (``SFPK_GOLDEN_DIR`` overrides it); see its
README for the problem, the tolerances and why masks must match exactly.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch

import sfpk
from golden import GOLDEN_DIR, assert_close, build_model, require_golden
from sfpk.masks.core import Masks
from sfpk.pruners import PruneContext

CASE_E = "baselines_case_e.json"
TOLERANCES = {"float64": (1e-5, 1e-5), "float32": (1e-4, 5e-5)}  # (rtol, atol), README
DTYPES = {"float64": torch.float64, "float32": torch.float32}
REFERENCE = ["Mag", "SNIP", "GraSP", "SynFlow"]


@cache
def _case_e() -> dict:
    return json.loads((GOLDEN_DIR / CASE_E).read_text())


def _golden() -> dict:
    """Case E's parsed JSON; fails, naming the directory, when the vectors are missing."""
    require_golden(CASE_E)
    return _case_e()


def _method(reference: str, dtype_name: str) -> tuple[str, dict]:
    """Our method name and the options that reproduce the reference's setting."""
    return {
        "Mag": ("mag", {}),
        "SNIP": ("snip", {"batches": None}),
        "GraSP": ("grasp", {"batches": None}),
        "SynFlow": (
            "synflow",
            {"rounds": 1, "train_mode": True, "float64": dtype_name == "float64"},
        ),
    }[reference]


def _model(dtype: torch.dtype) -> torch.nn.Module:
    return build_model(_golden(), dtype)


class _Recording:
    """The golden batches as a re-iterable that logs which batch indices were read."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.batches = [
            (b["index"], torch.tensor(b["x"], dtype=dtype), torch.tensor(b["y"]))
            for b in _golden()["problem"]["batches"]
        ]
        self.read: list[int] = []

    def __iter__(self):
        for index, x, y in self.batches:
            self.read.append(index)
            yield x, y


def _cases():
    return [(d, r) for d in DTYPES for r in REFERENCE]


@pytest.mark.parametrize(("dtype_name", "reference"), _cases())
def test_raw_scores_match_reference(dtype_name, reference):
    """Raw scores before thresholding match the reference within the README tolerances."""
    dtype, (rtol, atol) = DTYPES[dtype_name], TOLERANCES[dtype_name]
    golden = _golden()["results"][dtype_name][reference]["scores"]
    method, options = _method(reference, dtype_name)
    model = _model(dtype)
    scores = sfpk.create_pruner(method, **options).score(
        model, _Recording(dtype), Masks.ones(model), PruneContext()
    )
    assert list(scores) == _golden()["mask_names"]
    for name, value in scores.items():
        expected = torch.tensor(golden[name], dtype=torch.float64)
        assert value.shape == expected.shape, name
        assert_close(value, expected, name, rtol, atol)


@pytest.mark.parametrize(("dtype_name", "reference"), _cases())
def test_masks_and_kept_count_match_reference_exactly(dtype_name, reference):
    """The 0/1 masks and kept count at sparsity 0.5 (global) equal the reference's exactly."""
    result = _golden()["results"][dtype_name][reference]
    method, options = _method(reference, dtype_name)
    dtype = DTYPES[dtype_name]
    masks = sfpk.prune(
        _model(dtype), _Recording(dtype), method=method, sparsity=0.5, collapse_guard="off",
        **options,
    )  # fmt: skip
    for name, mask in masks.items():
        assert mask.tolist() == result["mask"][name], name
    assert masks.kept_weights() == result["kept"] == 31


@pytest.mark.parametrize(("dtype_name", "reference"), _cases())
def test_batches_read_match_reference(dtype_name, reference):
    """Each method reads the same batches in the same order as the reference."""
    result = _golden()["results"][dtype_name][reference]
    method, options = _method(reference, dtype_name)
    data = _Recording(DTYPES[dtype_name])
    sfpk.prune(_model(DTYPES[dtype_name]), data, method=method, sparsity=0.5, **options)
    assert data.read == result["batches_read"]


@pytest.mark.parametrize(("dtype_name", "reference"), _cases())
def test_weights_after_apply_match_reference(dtype_name, reference):
    """Applying the masks zeroes exactly the weights the reference zeroed."""
    dtype = DTYPES[dtype_name]
    result = _golden()["results"][dtype_name][reference]
    method, options = _method(reference, dtype_name)
    model = _model(dtype)
    sfpk.prune(model, _Recording(dtype), method=method, sparsity=0.5, **options).apply(model)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), torch.tensor(result["weights_after"][name], dtype=dtype))
