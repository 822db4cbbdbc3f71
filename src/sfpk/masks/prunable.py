"""Which parameters get masks, and the shape of their masks under each structure.

Conventions (the rest of sfpk refers here):

* A mask is keyed by the parameter's qualified name (``"layer1.0.conv1.weight"``) and
  broadcasts against that parameter: ``unstructured`` has the parameter's shape, ``filter``
  masks whole output filters/neurons (shape ``[C_out, 1, ...]``) and ``channel`` masks whole
  input channels/features (shape ``[1, C_in, ...]``). Bias masks are always element-wise.
  A grouped conv's weight is ``[C_out, C_in / groups, ...]``, so its channel mask has
  ``C_in / groups`` entries. Weights with a single input channel per group (depthwise
  convs, a first conv on one-channel inputs) get **no** channel mask: that one entry would
  gate the whole layer, so it could never be pruned and would only blur the counts.
* ``"N:M"`` (e.g. ``"2:4"``, semi-structured) masks are element-wise, and every group of
  ``M`` consecutive weights along the input dimension (dim 1: input features, or input
  channels at each kernel position) keeps exactly ``N``. Only weights whose dim 1 is a
  multiple of ``M`` get such a mask (others, and biases, stay dense).
* ``"head"``, ``"neuron"`` and ``"head+neuron"`` are coupled groups that span several
  tensors (attention heads, MLP neurons; :mod:`sfpk.masks.groups`): each member tensor gets a
  row (filter-shaped) or column (channel-shaped) mask, and a coupling table ties the entries
  of one group together. ``"coupled"`` gates the channel groups of a conv net's
  dependency graph the same way (:mod:`sfpk.deploy.channel_groups`), so that slimming removes
  every pruned channel.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ..errors import ConfigError, UnknownNameError

__all__ = [
    "FilterFn",
    "STRUCTURES",
    "Structure",
    "check_structure",
    "default_filter",
    "eligible_for",
    "group_kinds",
    "mask_shape",
    "output_rows",
    "parse_nm",
    "prunable_parameters",
    "tied_biases",
]

# "unstructured", "filter", "channel" or "N:M" with integers 0 < N < M (e.g. "2:4"); a str
# because N:M is open-ended (check_structure validates it).
Structure = str
STRUCTURES: tuple[str, ...] = (
    "unstructured",
    "filter",
    "channel",
    "coupled",
    "head",
    "neuron",
    "head+neuron",
    "N:M",
)
_NAMED = STRUCTURES[:-1]
_GROUP_STRUCTURES = {
    "head": ("head",),
    "neuron": ("neuron",),
    "head+neuron": ("head", "neuron"),
    "coupled": ("channel",),
}
_STRUCTURE_CHOICES = (
    "choose one of unstructured, filter, channel, coupled, head, neuron, head+neuron or N:M "
    "such as 2:4"
)
_NM = re.compile(r"^(\d+):(\d+)$")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
FilterFn = Callable[[str, nn.Module, str], bool]


def parse_nm(structure: str) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` structure, None for the named structures.

    Raises:
        ConfigError: an ``N:M`` without ``0 < N < M``.
    """
    match = _NM.match(str(structure))
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"structure={structure!r}: N:M needs 0 < N < M")
    return n, m


def check_structure(structure: str) -> str:
    """``structure`` if it is a known structure, else a ConfigError naming the choices."""
    if structure in _NAMED or parse_nm(structure) is not None:
        return structure
    raise UnknownNameError("structure", structure, [*_NAMED, "N:M (e.g. 2:4)"])


def group_kinds(structure: Structure) -> tuple[str, ...] | None:
    """The coupled group kinds of a head/neuron structure, None for the others."""
    return _GROUP_STRUCTURES.get(structure)


def eligible_for(structure: Structure, name: str, shape: Sequence[int]) -> bool:
    """Whether parameter ``name`` can carry a mask of ``structure``.

    Channel masks skip weights with one input channel per group; N:M masks need a weight
    whose dim 1 is a multiple of M (biases are never N:M).
    """
    if structure == "channel":
        return _is_bias(name, shape) or shape[1] > 1
    nm = parse_nm(structure)
    if nm is not None:
        return not _is_bias(name, shape) and shape[1] % nm[1] == 0
    return True


def default_filter(module_name: str, module: nn.Module, tensor_name: str) -> bool:
    """The default prunable rule: weights of every conv and linear layer.

    The first conv and the classifier are included (method spec §1.1, §9.3). Biases are not
    pruned by default; see ``include_bias`` of :func:`prunable_parameters`.
    """
    return tensor_name == "weight" and isinstance(module, (*_CONV_TYPES, nn.Linear))


def prunable_parameters(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_bias: bool = False,
    filter_fn: FilterFn | None = None,
) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of ``model`` by qualified name, in model order.

    Args:
        model: any module.
        include: glob patterns (``fnmatch``) of parameter names to prune *instead of* the
            default rule, e.g. ``["features.*.weight"]``.
        exclude: glob patterns removed from the selection, e.g. ``["fc.weight"]``.
        include_bias: also prune linear-layer biases, as the reference implementation does.
        filter_fn: ``(module_name, module, tensor_name) -> bool``; replaces the default rule.

    A model may declare ``sfpk_default_exclude``, glob patterns its default rule leaves out
    (a transformer wrapper names its embeddings and LM head); ``include`` overrides it.

    Raises:
        ConfigError: if nothing is prunable, or a pattern matches no parameter.
    """
    rule = filter_fn or default_filter
    selected: dict[str, nn.Parameter] = {}
    all_names: list[str] = []
    for module_name, module in model.named_modules():
        for tensor_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{tensor_name}" if module_name else tensor_name
            all_names.append(name)
            if include is not None:
                chosen = any(fnmatch.fnmatchcase(name, p) for p in include)
            else:
                chosen = rule(module_name, module, tensor_name) or (
                    include_bias and tensor_name == "bias" and isinstance(module, nn.Linear)
                )
            if chosen:
                selected[name] = param
    for pattern in [*(include or []), *(exclude or [])]:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
            raise ConfigError(f"pattern {pattern!r} matches no parameter of the model")
    dropped = [
        *(exclude or []),
        *(getattr(model, "sfpk_default_exclude", ()) if include is None else ()),
    ]
    if dropped:
        selected = {
            n: p for n, p in selected.items() if not any(fnmatch.fnmatchcase(n, e) for e in dropped)
        }
    if not selected:
        raise ConfigError("the model has no prunable parameters (no conv/linear weights selected)")
    return selected


def _is_bias(name: str, shape: Sequence[int]) -> bool:
    """Biases and other 1-D tensors are masked element-wise under every structure."""
    return name.rsplit(".", 1)[-1] == "bias" or len(shape) < 2


def output_rows(shape: Sequence[int]) -> int:
    """Output rows of a tensor: its first dim (a 1-D tensor, e.g. a bias, is one row)."""
    return shape[0] if len(shape) > 1 else 1


def mask_shape(name: str, shape: Sequence[int], structure: Structure) -> tuple[int, ...]:
    """Shape of the mask of parameter ``name`` (of ``shape``) under ``structure``."""
    shape = tuple(shape)
    if structure in _GROUP_STRUCTURES:
        raise ConfigError(
            f"the mask shape of {name!r} under structure={structure!r} depends on its coupled "
            "group (sfpk.masks.groups.group_mask_shape)"
        )
    if structure == "unstructured" or _is_bias(name, shape) or parse_nm(structure):
        return shape
    if structure == "filter":
        return (shape[0],) + (1,) * (len(shape) - 1)
    if structure == "channel":
        return (1, shape[1]) + (1,) * (len(shape) - 2)
    raise ConfigError(f"structure={structure!r}; {_STRUCTURE_CHOICES}")


def tied_biases(model: nn.Module, params: Mapping[str, nn.Parameter]) -> dict[str, str]:
    """bias name -> weight name, for layers whose weight gets a filter mask."""
    tied = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        weight, bias = prefix + "weight", prefix + "bias"
        if weight in params and getattr(module, "bias", None) is not None and bias not in params:
            if isinstance(module.bias, nn.Parameter):
                tied[bias] = weight
    return tied
