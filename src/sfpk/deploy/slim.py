"""Slimming: physically remove pruned filters and channels, through torch-pruning's graph.

This is the one module of sfpk that imports ``torch_pruning`` (the optional extra
``sfpk[slim]``), and only inside functions, so ``import sfpk`` works without it; so does
:func:`resize_to_state_` (used by :func:`sfpk.load_model`).

**Coupled groups.** torch-pruning traces the model once and finds, for every conv/linear
output, the set of tensor dims that must lose the same channel together: the producing
conv's filters, its BatchNorm, the next layers' input channels, every branch of a residual
sum, depthwise convs in between, the classifier's inputs. :func:`coupled_channel_groups`
returns these groups as plain data.

**Which channels go (the exact rule).** A channel of a coupled group is removed only when
removing it cannot change the masked model's outputs, i.e. when one of these holds for
the model *with its masks applied*:

* *ignored*: every consumer in the group (a conv's input channel, a linear's input
  features; depthwise convs pass a channel through and are not consumers) has only zero
  weights for that channel, so whatever the channel carries is multiplied by zero; or
* *silent*: every producer in the group (a conv's filter or linear's row with its bias;
  depthwise convs again pass through) is entirely zero for that channel, **and** the value
  that reaches every consumer is exactly zero. With every producer pruned, that value no
  longer depends on the input (it is a BatchNorm shift ``beta - gamma * mean /
  sqrt(var + eps)`` passed through element-wise ops), so it is checked once, on the
  example input; or
* *constant*: every producer is pruned and the channel carries a non-zero constant, but
  every consumer is a linear layer with a bias that sees it as a 2-D input (after global
  pooling or a flatten): the constant's contribution ``weight[:, c] * value`` is added to
  that bias, which is exact.

So a residual channel pruned in one branch but kept in another is kept (its zeros stay
zeros), and a pruned filter whose BatchNorm still emits a non-zero shift into a conv is
kept too: dropping it would change the outputs (a padded conv sees the constant everywhere
but at the border, which no bias can express). At least one channel of each group is kept.
Groups
that reach the model's output (no consumer: the classifier's classes) and groups holding
layers other than conv, linear and BatchNorm (or grouped, non-depthwise convs) are left
whole. ``docs/export.md`` explains why this rule, not "prune if any member is pruned".

**Rebuilding a slim model without torch-pruning** (the last part): :func:`resize_to_state_`
gives a freshly built architecture the layer widths of a slim state dict, so that
:func:`sfpk.load_model` can load it; the conv kinds slimming knows are shared by both parts.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..masks.core import Masks

__all__ = [
    "SLIMMABLE_STRUCTURES",
    "ChannelGroup",
    "check_slimmable",
    "coupled_channel_groups",
    "resize_to_state_",
    "slim_model",
    "CONV_TYPES",
    "is_depthwise",
]

log = logging.getLogger(__name__)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise conv (one group per channel, as many out as in)."""
    return (
        isinstance(module, CONV_TYPES)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


SLIMMABLE_STRUCTURES: tuple[str, ...] = ("filter", "channel", "coupled")
_WEIGHTED = (*CONV_TYPES, nn.Linear)


def check_slimmable(structure: str) -> str:
    """``structure`` if masks of it can be slimmed, else a ConfigError naming the allowed ones."""
    if structure in SLIMMABLE_STRUCTURES:
        return structure
    raise ConfigError(
        f"slimming needs structured masks, but the masks have structure={structure!r} "
        f"(it zeroes single weights, not whole filters or channels); slimming works with "
        f"structure {' or '.join(repr(s) for s in SLIMMABLE_STRUCTURES)}"
    )


def _torch_pruning() -> Any:
    try:
        return importlib.import_module("torch_pruning")
    except ImportError:
        raise ConfigError(
            "slimming needs torch-pruning, which is not installed; pip install 'sfpk[slim]'"
        ) from None


@dataclass(frozen=True)
class ChannelGroup:
    """Tensor dims that share one set of channels (removing channel c removes it in all).

    Attributes:
        size: number of channels of the group (its root layer's outputs).
        members: ``(parameter name, dim)`` pairs, e.g. ``("layer1.0.conv1.weight", 1)``.
            A member's dim may be a multiple ``k * size`` long (a linear layer after a
            flatten): channel ``c`` is then the block ``c*k ... c*k + k - 1``.
    """

    size: int
    members: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"size": n, "members": [[name, dim], ...]}``."""
        return {"size": self.size, "members": [list(m) for m in self.members]}


@dataclass
class _Member:
    name: str
    module: nn.Module
    role: str  # "producer", "consumer", "passthrough" or "passive"
    idxs: Tensor  # this member's indices ...
    roots: Tensor  # ... and the root channel of each


def _build_graph(tp: Any, model: nn.Module, example_input: Tensor) -> Any:
    with torch.enable_grad():  # the graph is traced from autograd's grad_fn
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _members(graph: Any, group: Any, names: dict[nn.Module, str]) -> list[_Member] | None:
    """The group's layers with their roles; None when a layer is of a kind we do not slim."""
    members = []
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            return None  # a bare nn.Parameter
        if not any(True for _ in module.parameters(recurse=False)):
            continue  # activations, pooling, additions, reshapes (torch-pruning's own ops)
        outputs = graph.is_out_channel_pruning_fn(item.dep.handler)
        if is_depthwise(module):
            role = "passthrough"
        elif isinstance(module, _WEIGHTED) and getattr(module, "groups", 1) == 1:
            role = "producer" if outputs else "consumer"
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            role = "passive"
        else:
            return None
        idxs = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
        roots = torch.tensor([int(r) for r in item.root_idxs], dtype=torch.long)
        members.append(_Member(names.get(module, "?"), module, role, idxs, roots))
    return members


def _groups(graph: Any, model: nn.Module) -> list[tuple[Any, list[_Member] | None]]:
    names = {module: name for name, module in model.named_modules()}
    return [(g, _members(graph, g, names)) for g in graph.get_all_groups()]


def coupled_channel_groups(model: nn.Module, example_input: Tensor) -> list[ChannelGroup]:
    """The groups of ``(parameter name, dim)`` that torch-pruning's dependency graph couples.

    Structured pruning that removes channel ``c`` from every member of a group at once
    produces masks that :func:`slim_model` removes completely. ``model`` is not changed
    (the graph is traced on a CPU copy in eval mode).

    Args:
        model: any module of conv, linear, BatchNorm and parameter-free layers.
        example_input: one input batch, e.g. ``torch.zeros(1, 3, 32, 32)``.

    Returns:
        One :class:`ChannelGroup` per coupled set, in the graph's order. Groups whose
        channels reach the model's output (the classifier's classes) are included.

    Raises:
        ConfigError: torch-pruning is not installed.

    Example:
        >>> groups = coupled_channel_groups(model, torch.zeros(1, 3, 32, 32))  # doctest: +SKIP
        >>> groups[0].as_dict()["members"][:2]                                 # doctest: +SKIP
        [['conv1.weight', 0], ['bn1.weight', 0]]
    """
    tp = _torch_pruning()
    work = copy.deepcopy(model).to("cpu").eval()
    graph = _build_graph(tp, work, example_input.to("cpu"))
    names = {module: name for name, module in work.named_modules()}
    out = []
    for group in graph.get_all_groups():
        members: list[tuple[str, int]] = []
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module):
                continue
            prefix = names.get(module, "?")
            whole = graph.is_out_channel_pruning_fn(item.dep.handler) or is_depthwise(module)
            for tensor_name, _ in module.named_parameters(recurse=False):
                if not whole and tensor_name != "weight":
                    continue  # a layer's input channels are its weight's dim 1 only
                pair = (f"{prefix}.{tensor_name}" if prefix else tensor_name, 0 if whole else 1)
                if pair not in members:
                    members.append(pair)
        if members:
            out.append(ChannelGroup(size=len(group.items[0].idxs), members=tuple(members)))
    return out


@dataclass
class _Seen:
    """What a consumer layer received on the example input."""

    amax: Tensor  # per input channel: the largest |value|
    constant: Tensor  # per input feature of a linear layer: the value, NaN if it varies


def _consumer_inputs(
    model: nn.Module, consumers: list[nn.Module], example_input: Tensor
) -> dict[nn.Module, _Seen]:
    """Per consumer layer: what each of its input channels carried on ``example_input``."""
    seen: dict[nn.Module, _Seen] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach()
        dim = 1 if isinstance(module, CONV_TYPES) else x.dim() - 1
        amax = x.abs().transpose(0, dim).reshape(x.shape[dim], -1).amax(dim=1)
        constant = torch.full_like(amax, float("nan"))
        if isinstance(module, nn.Linear) and x.dim() == 2 and module not in seen:
            constant = torch.where((x == x[0]).all(dim=0), x[0], constant)
        if module in seen:  # a layer called twice: no constant folding
            amax = torch.maximum(seen[module].amax, amax)
        seen[module] = _Seen(amax, constant)

    handles = [m.register_forward_pre_hook(hook) for m in set(consumers)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _per_root(flags: Tensor, member: _Member, size: int) -> Tensor:
    """Per root channel: whether any of its indices in ``member`` has its flag set."""
    hits = torch.zeros(size, dtype=torch.long)
    return hits.index_add_(0, member.roots, flags[member.idxs].long()) > 0


def _decide(
    members: list[_Member], seen: dict[nn.Module, _Seen], size: int
) -> tuple[Tensor, Tensor]:
    """Per root channel: whether it can go (module docstring), and whether it needs folding."""
    none = torch.zeros(size, dtype=torch.bool)
    read, carries, live, produced, unfoldable = (none.clone() for _ in range(5))
    for m in members:
        weight = m.module.weight.detach()
        if m.role == "consumer":
            read |= _per_root(weight.transpose(0, 1).flatten(1).any(dim=1), m, size)
            carries |= _per_root(seen[m.module].amax != 0, m, size)
            can_fold = ~torch.isnan(seen[m.module].constant)
            if getattr(m.module, "bias", None) is None:
                can_fold = torch.zeros_like(can_fold)  # nowhere to put the constant
            unfoldable |= _per_root(~can_fold, m, size)
        elif m.role == "producer":
            flags = weight.flatten(1).any(dim=1)
            bias = getattr(m.module, "bias", None)
            if bias is not None:
                flags |= bias.detach() != 0
            live |= _per_root(flags, m, size)
            produced |= _per_root(torch.ones_like(flags), m, size)
    constant = produced & ~live  # the channel no longer depends on the input
    removable = ~read | (constant & ~carries)
    fold = constant & carries & ~unfoldable & read
    return removable | fold, fold


@torch.no_grad()
def _fold_constants(members: list[_Member], seen: dict[nn.Module, _Seen], fold: Tensor) -> None:
    """Add the constant that folded channels feed each linear consumer to that layer's bias."""
    for m in members:
        if m.role != "consumer":
            continue
        idxs = m.idxs[fold[m.roots]]
        if len(idxs):
            values = seen[m.module].constant[idxs].to(m.module.weight.dtype)
            m.module.bias += m.module.weight[:, idxs] @ values


def slim_model(
    model: nn.Module,
    masks: Masks | None,
    example_input: Tensor,
) -> nn.Module:
    """A smaller copy of ``model`` without the channels its structured masks prune.

    ``model`` is not changed: a copy gets the masks applied, then every coupled channel
    that the rule of this module's docstring allows is removed from all layers of its
    group (torch-pruning does the surgery). The copy computes the same outputs as the
    masked model (up to float rounding) and is returned in eval mode.

    Args:
        model: the pruned model (any mode; BatchNorm is used in eval mode).
        masks: its ``filter`` or ``channel`` masks; None slims by the zeros the weights
            already hold.
        example_input: one input batch, used to trace the graph and to check that
            removed channels carry zeros.

    Returns:
        The slim model, in eval mode, on the CPU.

    Raises:
        ConfigError: masks that are not structured, or torch-pruning is not installed.
        MaskMismatchError: masks that do not fit ``model``.

    Example:
        >>> small = slim_model(model, masks, torch.zeros(1, 3, 32, 32))  # doctest: +SKIP
    """
    if masks is not None:
        check_slimmable(masks.structure)
        masks.check_fits(model)
    tp = _torch_pruning()
    work = copy.deepcopy(model).to("cpu").eval()
    example_input = example_input.to("cpu")
    if masks is not None:
        masks.apply(work)
    graph = _build_graph(tp, work, example_input)
    plan = []
    groups = _groups(graph, work)
    consumers = [m.module for _, ms in groups if ms for m in ms if m.role == "consumer"]
    seen = _consumer_inputs(work, consumers, example_input)
    for group, members in groups:
        if members is None or not any(m.role == "consumer" for m in members):
            continue  # layers we do not slim, or the channels of the model's output
        size = len(group.items[0].idxs)
        removable, fold = _decide(members, seen, size)
        remove = torch.nonzero(removable).flatten().tolist()
        if len(remove) == size:  # keep one channel so that the layers still exist
            fold[remove[0]] = False
            remove = remove[1:]
        if remove:
            root = group.items[0].dep
            plan.append((root.target.module, root.handler, remove, members, fold))
    # every decision above saw the unchanged model; now fold, then cut
    for module, handler, remove, members, fold in plan:
        _fold_constants(members, seen, fold)
        graph.get_pruning_group(module, handler, remove).prune()
    log.info("slimmed %d coupled groups", len(plan))
    return work.eval()


def _resize_conv(module: nn.Module, weight: Sequence[int]) -> None:
    depthwise = is_depthwise(module)
    if module.groups > 1 and not depthwise:
        raise CheckpointError(f"cannot resize grouped conv {module} to weight {list(weight)}")
    module.out_channels = weight[0]
    module.in_channels = weight[0] if depthwise else weight[1]
    if depthwise:
        module.groups = weight[0]


def resize_to_state_(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Mutates ``model``: resizes its conv, linear and BatchNorm layers to ``state``'s shapes.

    This rebuilds a slim model from a freshly built architecture and the slim state dict
    (no torch-pruning needed): each layer whose tensors in ``state`` have other shapes gets
    new, uninitialised tensors of those shapes and matching ``in/out_channels``,
    ``in/out_features``, ``groups`` or ``num_features``. Load the state dict afterwards.

    Returns:
        The names of the resized layers.

    Raises:
        CheckpointError: a layer of another kind (or a grouped conv) would need resizing.
    """
    resized = []
    for prefix, module in model.named_modules():
        own = {
            n: t
            for n, t in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]
            if t is not None
        }
        key = f"{prefix}." if prefix else ""
        changed = {
            n for n, t in own.items() if key + n in state and state[key + n].shape != t.shape
        }
        if not changed:
            continue
        if isinstance(module, CONV_TYPES):
            _resize_conv(module, state[key + "weight"].shape)
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = state[key + "weight"].shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = state[key + "running_mean"].shape[0]
        else:
            raise CheckpointError(
                f"layer {prefix!r} ({type(module).__name__}) has tensors of other shapes in the "
                f"file ({sorted(changed)}); only conv, linear and BatchNorm layers are resized"
            )
        for name in changed:
            new = torch.empty(state[key + name].shape, dtype=own[name].dtype)
            if isinstance(own[name], nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=own[name].requires_grad))
            else:
                setattr(module, name, new)
        resized.append(prefix)
    return resized
