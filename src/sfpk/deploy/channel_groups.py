"""Coupled channel masks (``structure="coupled"``): structured masks slimmable by construction.

A plain filter mask decides each layer on its own. In a residual network the channels
that an addition joins belong to several layers at once, and BatchNorm keeps emitting its
shift for a pruned filter, so such masks save weights but cannot all be removed physically
(``docs/models.md``, ``docs/export.md``). Here one decision covers a whole **channel
group** of torch-pruning's dependency graph (:func:`sfpk.deploy.slim.coupled_channel_groups`):

* the masks gate the group's **producers**: the filters (output rows) of every conv or
  linear layer, depthwise convs included, that writes the channel;
* their biases and the BatchNorm weight and bias of the channel are **tied** to those
  masks (:attr:`sfpk.masks.core.Masks.tied_biases`), so a removed channel carries exactly zero;
* its consumers (the next layers' input columns) need no mask: a zero input channel is
  what :func:`sfpk.deploy.slim.slim_model` removes from them.

So every removed channel is removed by the slimming, and the slim model computes what the
masked one does. Groups that reach the model's output (the classifier's classes), and
groups with a producer outside the prunable set (``include``/``exclude``), stay whole.
Sparsity is counted, as for filter masks, in the producers' weights.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor, nn

from ..errors import ConfigError
from ..masks.core import Masks
from ..masks.groups import Block, Coupling, Member
from .slim import coupled_channel_groups

__all__ = ["coupled_channel_masks"]


def coupled_channel_masks(
    model: nn.Module, example_input: Tensor, prunable: Collection[str] | None = None
) -> Masks:
    """All-ones ``coupled`` masks over the channel groups of ``model``.

    Args:
        model: a network of conv, linear, BatchNorm and parameter-free layers.
        example_input: one input batch (its first item is enough) to trace the graph.
        prunable: the parameter names that may be pruned (default: every weight).

    Raises:
        ConfigError: torch-pruning is missing, or no channel group can be pruned.
    """
    params = dict(model.named_parameters())
    blocks: list[Block] = []
    tied: dict[str, str] = {}
    used: set[str] = set()
    for group in coupled_channel_groups(model, example_input[:1]):
        rows = [n for n, dim in group.members if dim == 0]
        producers = [n for n in rows if params[n].dim() >= 2]
        if not producers or not any(dim == 1 for _, dim in group.members):
            continue  # the model's outputs, or a group without a layer we can gate
        if any(params[n].shape[0] != group.size for n in rows):
            continue
        if prunable is not None and not all(n in prunable for n in producers):
            continue
        if used.intersection(producers):
            continue
        used.update(producers)
        members = tuple(Member(n, 0, 0, 1) for n in producers)
        blocks.append(Block(producers[0].rsplit(".", 1)[0], "channel", group.size, members))
        for name in rows:
            if params[name].dim() == 1:
                own = f"{name.rsplit('.', 1)[0]}.weight"
                tied[name] = own if own in producers else producers[0]
    if not blocks:
        raise ConfigError(
            f"structure='coupled' found no prunable channel group in {type(model).__name__}: "
            "it needs conv/linear layers whose outputs feed other layers"
        )
    return Masks.coupled_ones(model, Coupling(tuple(blocks)), "coupled", tied)
