"""Load the reference implementation's golden vectors (``tests/golden``, see its README).

The directory is ``tests/golden`` in the repository, or ``$SFPK_GOLDEN_DIR`` when set (to test
against another copy). Tests that need it call :func:`require_golden`, which fails with the
place it looked when the vectors are missing (they are part of the repository, so never skip).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

GOLDEN_DIR = Path(os.environ.get("SFPK_GOLDEN_DIR", Path(__file__).resolve().parent / "golden"))
# Golden README, "Recommended tolerances" (float32 implementation).
RTOL, ATOL = 1e-4, 5e-5


def require_golden(filename: str = "sfpk_case_a.json") -> Path:
    """The golden directory (checked to hold ``filename``); fails the test, naming it, if not."""
    if not (GOLDEN_DIR / filename).is_file():
        pytest.fail(f"golden vectors not found in {GOLDEN_DIR} (set SFPK_GOLDEN_DIR)")
    return GOLDEN_DIR


@cache
def load_case(name: str) -> dict[str, Any]:
    """The parsed JSON of ``sfpk_case_<name>.json`` (e.g. ``"a"``, ``"d1"``)."""
    path = require_golden() / f"sfpk_case_{name}.json"
    return json.loads(path.read_text())


def build_model(case: dict[str, Any], dtype: torch.dtype = torch.float32) -> nn.Module:
    """The case's model (bias-free MLP or conv net) in ``dtype`` with the stored weights."""
    problem = case["problem"]
    if any("Conv2d" in line for line in problem["architecture"]):
        model = nn.Sequential(
            nn.Conv2d(2, 8, 3, bias=False),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3, bias=False),
        )
    else:
        model = nn.Sequential(
            nn.Linear(6, 5, bias=False),
            nn.ReLU(),
            nn.Linear(5, 4, bias=False),
            nn.ReLU(),
            nn.Linear(4, 3, bias=False),
        )
    model = model.to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.tensor(problem["weights"][name], dtype=dtype))
    return model


def batches(case: dict[str, Any]) -> list[tuple[Tensor, Tensor]]:
    """The case's batches as ``(x, y)`` tensors, in index order."""
    out = []
    for k, batch in enumerate(case["problem"]["batches"]):
        assert batch["index"] == k
        out.append((torch.tensor(batch["x"], dtype=torch.float32), torch.tensor(batch["y"])))
    return out


def flat(tensors: dict[str, Any], names: list[str]) -> Tensor:
    """Concatenate a golden tensor dict in ``names`` order, each flattened row-major."""
    return torch.cat([torch.tensor(tensors[n], dtype=torch.float64).reshape(-1) for n in names])


def assert_close(
    actual: Tensor, golden: Tensor, what: str, rtol: float = RTOL, atol: float = ATOL
) -> None:
    """``|a - g| ≤ rtol|g| + atol·max|g|`` element-wise (golden README tolerances)."""
    actual = actual.detach().to(torch.float64).reshape(-1)
    golden = golden.to(torch.float64).reshape(-1)
    bound = rtol * golden.abs() + atol * golden.abs().max()
    worst = float(((actual - golden).abs() - bound).max())
    assert worst <= 0.0, f"{what}: exceeds the tolerance by {worst:.3g}"


def assert_scalar(actual: float, golden: float, what: str) -> None:
    """Relative agreement ``rtol`` for scalars (G, E, K, dt)."""
    assert abs(actual - golden) <= RTOL * abs(golden) + 1e-12, f"{what}: {actual} vs {golden}"
