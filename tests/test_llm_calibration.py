"""Calibration windows and their checks (sfpk.llm.calibration)."""

from __future__ import annotations

import pytest
import torch

from sfpk.errors import ConfigError, DataError
from sfpk.llm import check_seqlen, sample_calibration
from sfpk.models import create


def test_windows_are_contiguous_slices_of_the_stream():
    """Each calibration sample must be a real window of the text, not shuffled tokens."""
    tokens = torch.arange(1000)
    windows = sample_calibration(tokens, num_samples=8, seqlen=16, seed=0)
    assert windows.shape == (8, 16) and windows.dtype == torch.int64
    assert (windows.diff(dim=1) == 1).all()


def test_same_seed_same_windows_other_seed_other_windows():
    """Calibration must be reproducible by seed (and depend on it)."""
    tokens = torch.arange(10_000)
    first = sample_calibration(tokens, num_samples=4, seqlen=8, seed=1)
    assert torch.equal(first, sample_calibration(tokens, num_samples=4, seqlen=8, seed=1))
    assert not torch.equal(first, sample_calibration(tokens, num_samples=4, seqlen=8, seed=2))


def test_text_smaller_than_the_asked_calibration_names_both_numbers():
    """A stream with fewer tokens than S x L must fail early, saying what was asked."""
    with pytest.raises(DataError, match=r"63 tokens, fewer than the 4 samples x 16 tokens = 64"):
        sample_calibration(torch.arange(63), num_samples=4, seqlen=16, seed=0)
    assert sample_calibration(torch.arange(64), num_samples=4, seqlen=16, seed=0).shape == (4, 16)


def test_seqlen_above_the_model_positions_is_refused():
    """A window longer than the position table must be refused, naming both lengths."""
    model = create("gpt_tiny", num_classes=32, context=16, dim=16, depth=1, num_heads=2)
    assert check_seqlen(model, 16) == 16
    with pytest.raises(ConfigError, match=r"seqlen=17.*16 positions"):
        check_seqlen(model, 17)
