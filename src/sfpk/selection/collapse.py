"""The collapse guard: which mask entries must survive so that no layer is disconnected.

At extreme sparsity an unstructured global (or per-layer) cut can remove every weight of an
output unit or of a whole layer; the network's output then stops depending on its input
and fine-tuning cannot bring it back. The guard protects a few entries before the cut:

* ``"row"`` (default): the best live entry of every output row (a weight tensor's first
  dim: an output neuron or filter), so every unit keeps at least one input;
* ``"layer"``: the best live entry of every weight tensor (used when the kept budget is
  smaller than the number of rows);
* ``"off"``: nothing (the reference's behaviour; the golden tests use it).

Protected entries rank above every other, so the cut still removes exactly as many entries
as without the guard: the weights it keeps are taken from the lowest-scored unprotected
ones. Where the guard changes nothing (every protected entry would have survived anyway)
the masks are bit-identical to an unguarded cut. Entries already pruned stay pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["GUARDS", "Guard", "protected_entries"]

Guard = Literal["row", "layer", "off"]
GUARDS: tuple[str, ...] = ("row", "layer", "off")


def _best_per_row(chunk: Tensor, rows: int) -> Tensor:
    """Flat indices (within ``chunk``) of the best live entry of each of ``rows`` rows; a
    row whose entries are all pruned already (``-inf``) has none."""
    table = chunk.reshape(rows, -1)
    best_value, best = table.max(dim=1)
    index = torch.arange(rows, device=chunk.device) * table.shape[1] + best
    return index[best_value > -torch.inf]


def protected_entries(
    flat: Tensor,
    shapes: Sequence[Sequence[int]],
    kept: Sequence[int],
    guard: Guard,
) -> tuple[Tensor, str]:
    """Flat indices the cut must keep, and the guard actually applied.

    Args:
        flat: scores of every mask entry, mask after mask (already pruned: ``-inf``).
        shapes: the mask shape of each tensor, in ``flat``'s order (1-D tensors, e.g.
            biases, are never protected: they carry no input connection).
        kept: how many entries the cut keeps: one number (global scope) or one per tensor
            (local scope).
        guard: ``"row"``, ``"layer"`` or ``"off"``.

    Returns:
        ``(indices, mode)``: ``mode`` is ``"row"``, ``"layer"`` (also when ``"row"`` does not
        fit in the kept budget) or ``"off"`` (nothing fits, or the guard is off).
    """
    if guard == "off":
        return flat.new_zeros(0, dtype=torch.long), "off"
    sizes = [int(torch.Size(shape).numel()) for shape in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    chunks = flat.split(sizes)
    weights = [i for i, shape in enumerate(shapes) if len(shape) > 1]
    for mode in ["row", "layer"] if guard == "row" else ["layer"]:
        picks = [
            _best_per_row(chunks[i], shapes[i][0] if mode == "row" else 1) + starts[i]
            for i in weights
        ]
        counts = [p.numel() for p in picks]
        if len(kept) == 1:
            fits = sum(counts) <= kept[0]
        else:
            fits = all(c <= kept[i] for c, i in zip(counts, weights, strict=True))
        if fits:
            return (torch.cat(picks) if picks else flat.new_zeros(0, dtype=torch.long)), mode
    return flat.new_zeros(0, dtype=torch.long), "off"
