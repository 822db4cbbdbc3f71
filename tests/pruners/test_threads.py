"""``sfpk.pruners.threads.intra_op_threads``: a block's thread count, restored afterwards."""

from __future__ import annotations

import pytest
import torch

from sfpk.pruners.threads import intra_op_threads


@pytest.fixture
def two_threads():
    """The caller runs on two threads (restored to the session's count afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_block_runs_on_the_given_count_and_the_caller_gets_its_own_back(two_threads):
    """Inside the block torch uses the count asked for; after it, the caller's again."""
    with intra_op_threads(1) as caller:
        inside = torch.get_num_threads()
    assert (caller, inside, torch.get_num_threads()) == (2, 1, 2)


def test_caller_count_comes_back_when_the_block_raises(two_threads):
    """An exception in the block must not leave the caller's process on one thread."""
    with pytest.raises(RuntimeError, match="boom"), intra_op_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_nested_blocks_restore_each_level(two_threads):
    """A block inside a block (the engine's passes inside its step) restores the outer one."""
    with intra_op_threads(1) as caller:
        with intra_op_threads(caller):
            inner = torch.get_num_threads()
        outer = torch.get_num_threads()
    assert (inner, outer, torch.get_num_threads()) == (2, 1, 2)
