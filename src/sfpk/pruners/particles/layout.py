"""The flat layout of a mask set: one ``[P_m]`` vector per particle, in mask-name order.

Particles, forces and scores live in flat tensors (rows of ``[n, P_m]`` buffers); this maps
them to per-parameter views (no copies) and holds the per-entry constants the dynamics need
(``|θ|`` reduced to mask shape, weights per entry, layer ids), computed once per call.

Head and neuron masks (:mod:`sfpk.masks.groups`) have one coordinate per **group**, not per mask
entry: a head spans rows of q, k, v and columns of o, and must move as one. Their "layers"
(segments, layer ids) are the coupled blocks (one attention module's heads, one MLP's
neurons); :meth:`FlatLayout.views` expands a row to mask tensors by indexing (a copy), and
:meth:`FlatLayout.mask_gradient_` sums the entries' gradients into their group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ...masks.core import Masks, reduce_to_mask
from ...masks.prunable import parse_nm

__all__ = ["FlatLayout"]


class FlatLayout:
    """Flattening of ``masks`` for ``model``; see the module docstring.

    Attributes:
        names: mask names in order; ``shapes``: their mask shapes; ``segments``: the
            ``(start, stop)`` slice of each in the flat vector.
        num_entries: ``P_m``, the number of mask entries; ``total_weights``: ``P``.
        structured: whether masks cover groups of weights.
        entry_weight: ``[P_m]`` weights per entry (None when unstructured).
        layer_ids: ``[P_m]`` layer index of each entry; ``layer_totals``: ``[L]`` weights per
            layer (float64).
        abs_theta: ``[P_m]`` ``|θ|`` (structured: summed over each group).
        sq_theta_root: ``[P_m]`` ``sqrt(Σ θ²)`` over each group (unstructured: ``|θ|``).
        alive: ``[P_m]`` 1 where the entry's weights are not all zero.
        theta: detached parameters by name (masked ones and tied biases).
    """

    def __init__(self, model: nn.Module, masks: Masks, *, mask_weights: bool = False) -> None:
        """``mask_weights``: θ is taken as ``θ ⊙ 1[mask ≠ 0]`` (entries pruned in ``masks``
        are absent from the simulated network and never alive), as if ``masks`` had been
        applied to the model (spec §9.5)."""
        params = dict(model.named_parameters())
        self.names: list[str] = list(masks)
        self.shapes = [tuple(masks[n].shape) for n in self.names]
        sizes = [masks[n].numel() for n in self.names]
        # Coupled heads/neurons: mask name -> the group index of each of its entries.
        self.groups: dict[str, Tensor] | None = None
        if masks.coupling is not None:
            owners = masks.coupling.entry_groups(masks.shapes)
            self.groups = {n: owners[n].to(params[n].device) for n in self.names}
            sizes = masks.coupling.block_sizes()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.segments = tuple((s, s + k) for s, k in zip(starts, sizes, strict=True))
        self.num_entries = sum(sizes)
        self.total_weights = masks.total_weights()
        self.nm = parse_nm(masks.structure)  # (N, M) of an N:M mask set, else None
        # Entries gate several weights (filter, channel, head, neuron; not N:M).
        self.structured = masks.structure != "unstructured" and self.nm is None
        self.tied = {b: w for b, w in masks.tied_biases.items() if b not in masks}
        self.theta: dict[str, Tensor] = {n: params[n].detach() for n in [*self.names, *self.tied]}
        if mask_weights:
            for name, mask in masks.effective_masks().items():
                if bool((mask == 0).any()):
                    theta = self.theta[name]
                    self.theta[name] = theta * (mask != 0).to(theta.device, theta.dtype)
        first = self.theta[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        self.layer_ids = torch.cat(
            [torch.full((k,), i, dtype=torch.long) for i, k in enumerate(sizes)]
        ).to(self.device)
        if self.groups is not None:
            self._init_groups(masks, len(sizes))
            return
        counts = [masks.weights_per_entry(n) for n in self.names]

        def flat(parts: list[Tensor]) -> Tensor:
            return torch.cat([p.reshape(-1) for p in parts]).to(self.dtype)

        self.entry_weight: Tensor | None = None
        if any(c != 1 for c in counts):
            self.entry_weight = flat(
                [
                    torch.full((k,), float(c), device=self.device)
                    for k, c in zip(sizes, counts, strict=True)
                ]
            )
        self.layer_totals = torch.tensor(
            [float(self.theta[n].numel()) for n in self.names], dtype=torch.float64
        ).to(self.device)
        thetas = [self.theta[n] for n in self.names]
        self.abs_theta = flat(
            [reduce_to_mask(t.abs(), s) for t, s in zip(thetas, self.shapes, strict=True)]
        )
        if self.structured:
            self.sq_theta_root = flat(
                [
                    reduce_to_mask(t.square(), s).sqrt()
                    for t, s in zip(thetas, self.shapes, strict=True)
                ]
            )
        else:
            self.sq_theta_root = self.abs_theta
        self.alive = (self.abs_theta > 0).to(self.dtype)

    def _init_groups(self, masks: Masks, blocks: int) -> None:
        """The per-group constants of coupled head/neuron masks (one coordinate per group)."""
        assert self.groups is not None and masks.coupling is not None
        buffer = dict(dtype=self.dtype, device=self.device)
        self.entry_weight = masks.coupling.group_weights(masks.shapes).to(**buffer)
        self.layer_totals = torch.zeros(blocks, dtype=torch.float64, device=self.device)
        self.layer_totals.index_add_(0, self.layer_ids, self.entry_weight.to(torch.float64))
        abs_sum = torch.zeros(self.num_entries, **buffer)
        sq_sum = torch.zeros(self.num_entries, **buffer)
        for name, shape in zip(self.names, self.shapes, strict=True):
            theta = self.theta[name]
            index = self.groups[name]
            abs_sum.index_add_(0, index, reduce_to_mask(theta.abs(), shape).reshape(-1))
            sq_sum.index_add_(0, index, reduce_to_mask(theta.square(), shape).reshape(-1))
        self.abs_theta, self.sq_theta_root = abs_sum, sq_sum.sqrt()
        self.alive = (self.abs_theta > 0).to(self.dtype)

    @property
    def num_layers(self) -> int:
        """Number of masked tensors (of coupled blocks for head/neuron masks)."""
        return len(self.segments)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate mask-shaped tensors into one flat vector (model dtype/device).

        Coupled masks give one value per group: the largest over its entries (they agree
        in any mask set built by sfpk).
        """
        if self.groups is None:
            return torch.cat(
                [tensors[n].detach().reshape(-1).to(self.device, self.dtype) for n in self.names]
            )
        out = torch.full((self.num_entries,), -math.inf, dtype=self.dtype, device=self.device)
        for name in self.names:
            values = tensors[name].detach().reshape(-1).to(self.device, self.dtype)
            out.scatter_reduce_(0, self.groups[name], values, reduce="amax")
        return out

    def views(self, row: Tensor) -> dict[str, Tensor]:
        """Mask-shaped views of one flat row (no copy; a gathered copy for coupled masks)."""
        if self.groups is not None:
            return {
                n: row[self.groups[n]].view(shape)
                for n, shape in zip(self.names, self.shapes, strict=True)
            }
        return {
            n: row[lo:hi].view(shape)
            for n, (lo, hi), shape in zip(self.names, self.segments, self.shapes, strict=True)
        }

    def entry_scores(self, row: Tensor) -> dict[str, Tensor]:
        """Mask-shaped scores whose sum over each selection group is ``row``'s value.

        Selection (:func:`sfpk.selection.topk.select_topk`) scores a coupled group by the sum of
        its entries, so each group's value goes on its first entry and zeros on the others
        (an exact sum); uncoupled masks get plain views.
        """
        if self.groups is None:
            return self.views(row)
        seen = torch.zeros(self.num_entries, dtype=torch.bool, device=row.device)
        out = {}
        for name, shape in zip(self.names, self.shapes, strict=True):
            index = self.groups[name]
            positions = torch.arange(index.numel(), device=index.device)
            first = ~seen[index] & (positions == _first_position(index, self.num_entries))
            seen[index] = True
            out[name] = torch.where(first, row[index], torch.zeros_like(row[index])).view(shape)
        return out

    def effective_weights(self, row: Tensor) -> dict[str, Tensor]:
        """``{name: θ ⊙ p}`` for one processed mask row ``p`` (tied biases included)."""
        views = self.views(row)
        out = {n: self.theta[n] * views[n] for n in self.names}
        for bias, weight in self.tied.items():
            out[bias] = self.theta[bias] * views[weight].reshape(-1)
        return out

    def mask_gradient_(self, grads: Mapping[str, Tensor], out: Tensor) -> Tensor:
        """Write ``u = ∂E/∂p`` (straight-through: ``(∂E/∂w_eff) ⊙ θ`` reduced to mask shape)
        into the flat row ``out`` and return it."""
        if self.groups is not None:
            return self._group_gradient_(grads, out)
        views = self.views(out)
        for name, shape in zip(self.names, self.shapes, strict=True):
            theta, view = self.theta[name], views[name]
            if shape == tuple(theta.shape):
                torch.mul(grads[name], theta, out=view)
            else:
                view.copy_(reduce_to_mask(grads[name] * theta, shape))
        for bias, weight in self.tied.items():
            views[weight].add_((grads[bias] * self.theta[bias]).view(views[weight].shape))
        return out

    def _group_gradient_(self, grads: Mapping[str, Tensor], out: Tensor) -> Tensor:
        """:meth:`mask_gradient_` for coupled masks: entry gradients summed per group."""
        assert self.groups is not None
        per_entry = {
            name: reduce_to_mask(grads[name] * self.theta[name], shape).reshape(-1)
            for name, shape in zip(self.names, self.shapes, strict=True)
        }
        for bias, weight in self.tied.items():
            per_entry[weight] = per_entry[weight] + (grads[bias] * self.theta[bias]).reshape(-1)
        out.zero_()
        for name, values in per_entry.items():
            out.index_add_(0, self.groups[name], values.to(out.dtype))
        return out


def _first_position(index: Tensor, groups: int) -> Tensor:
    """For each position ``i`` of ``index`` (values below ``groups``), the first position
    holding ``index[i]``."""
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((groups,), index.numel(), dtype=positions.dtype, device=index.device)
    first.scatter_reduce_(0, index, positions, reduce="amin")
    return first[index]
