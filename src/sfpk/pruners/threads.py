"""Intra-op thread counts for a block of code, restored afterwards.

The particle engine's own work between the network passes (thresholds, effective weights,
gradient scatter, G, repulsion, drift, votes) is a long run of small, memory-bound tensor
operations on ``[n, P_m]`` buffers. Each one large enough for torch's OpenMP pool wakes the
other threads and waits for all of them at its end; on a small model that costs about as
much as the operation itself, and on shared cores, where one of the threads may be waiting
for a core, it costs far more. :func:`intra_op_threads` runs such a block on one thread and
gives the caller's setting back to the network passes (``docs/performance.md``, "The whole
``sfpk.prune`` call against its raw passes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["intra_op_threads"]


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` intra-op threads; restore the caller's count on exit.

    The previous count comes back also when the block raises. Nothing is changed when the
    count already is ``count``.

    Args:
        count: threads for the block (``torch.set_num_threads``), at least 1.

    Yields:
        The caller's thread count (what the block may hand back to parts of itself).

    Example:
        >>> with intra_op_threads(1) as caller:
        ...     torch.get_num_threads()
        1
    """
    before = torch.get_num_threads()
    if before == count:
        yield before
        return
    torch.set_num_threads(count)
    try:
        yield before
    finally:
        torch.set_num_threads(before)
