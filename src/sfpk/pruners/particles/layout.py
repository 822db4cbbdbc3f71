"""The flat layout of a mask set: one ``[P_m]`` vector per particle, in mask-name order.

Particles, forces and scores live in flat tensors (rows of ``[n, P_m]`` buffers); this maps
them to per-parameter views (no copies) and holds the per-entry constants the dynamics need
(``|θ|`` reduced to mask shape, weights per entry, layer ids), computed once per call.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ...masks import Masks, reduce_to_mask
from ...prunable import parse_nm

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
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.segments = tuple((s, s + k) for s, k in zip(starts, sizes, strict=True))
        self.num_entries = sum(sizes)
        self.total_weights = masks.total_weights()
        self.structured = masks.structure in ("filter", "channel")  # entries gate groups
        self.nm = parse_nm(masks.structure)  # (N, M) of an N:M mask set, else None
        self.tied = {b: w for b, w in masks.tied_biases.items() if b not in masks}
        self.theta: dict[str, Tensor] = {n: params[n].detach() for n in [*self.names, *self.tied]}
        if mask_weights:
            for name, mask in masks.effective_masks().items():
                if bool((mask == 0).any()):
                    theta = self.theta[name]
                    self.theta[name] = theta * (mask != 0).to(theta.device, theta.dtype)
        first = self.theta[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
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
        self.layer_ids = torch.cat(
            [torch.full((k,), i, dtype=torch.long) for i, k in enumerate(sizes)]
        ).to(self.device)
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

    @property
    def num_layers(self) -> int:
        """Number of masked tensors."""
        return len(self.names)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate mask-shaped tensors into one flat vector (model dtype/device)."""
        return torch.cat(
            [tensors[n].detach().reshape(-1).to(self.device, self.dtype) for n in self.names]
        )

    def views(self, row: Tensor) -> dict[str, Tensor]:
        """Mask-shaped views of one flat row (no copy)."""
        return {
            n: row[lo:hi].view(shape)
            for n, (lo, hi), shape in zip(self.names, self.segments, self.shapes, strict=True)
        }

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
