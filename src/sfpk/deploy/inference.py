"""Inference-only rewrites of a trained (dense or slim) model.

:func:`fold_batchnorm` folds every BatchNorm that directly follows a conv or linear layer into
that layer's weight and bias. In eval mode a BatchNorm is a fixed per-channel affine map
``y = g * (x - mean) / sqrt(var + eps) + b``, so ``bn(conv(x))`` equals one conv with scaled
filters and a shifted bias; folding saves a full pass over every activation tensor, which is
a large share of a small CNN's CPU time (``docs/performance.md``, "CPU latency").
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..errors import ConfigError, SfpkError

__all__ = ["fold_batchnorm"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
        raise ConfigError(
            f"fold_batchnorm traces the model with torch.fx, which failed for "
            f"{type(model).__name__}: {type(error).__name__}: {error}"
        ) from error


def _foldable(graph_module: fx.GraphModule, node: fx.Node, calls: Counter[str]) -> fx.Node | None:
    """The producer node whose output only ``node`` (a BatchNorm call) reads, if foldable.

    ``calls`` counts the call sites of each module: a producer called more than once (a
    shared conv) is not foldable, since its other calls would get the BatchNorm too.
    """
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    norm = graph_module.get_submodule(str(node.target))
    if not isinstance(norm, _BatchNorm) or norm.running_mean is None:
        return None  # without running statistics, eval mode still normalises by the batch
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return None  # the un-normalised output is read elsewhere too (or is not a module's)
    producer = graph_module.get_submodule(str(source.target))
    if not isinstance(producer, _PRODUCERS) or calls[str(source.target)] != 1:
        return None
    if isinstance(producer, nn.Linear):
        # Linear maps the last dim, BatchNorm1d normalises dim 1: the same dim only for a
        # 2-D output, which only a shape pass on an example input can tell.
        meta = source.meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 2:
            return None
        channels = producer.out_features
    else:
        channels = producer.out_channels
    return source if channels == norm.num_features else None


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fold_batchnorm(
    model: nn.Module,
    example_input: Tensor | None = None,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> fx.GraphModule:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the layer before it.

    A BatchNorm is folded when its only input is the output of a ``Conv1d/2d/3d`` or
    ``Linear`` module that nothing else reads and that is called only there, and it tracks
    running statistics; after a ``Linear`` only when ``example_input`` shows a 2-D output
    (on ``[N, L, C]`` inputs a Linear's features are not BatchNorm1d's channels). Any other
    BatchNorm is kept as it is. The copy is a
    ``torch.fx.GraphModule`` that keeps the producers' names (``layer1.0.conv1``) and
    computes the same function as ``model.eval()`` up to float rounding. ``model`` is not
    changed. The copy is for inference only: training it would no longer normalise by batch
    statistics.

    Args:
        model: a module that ``torch.fx.symbolic_trace`` can trace (no data-dependent
            control flow in ``forward``).
        example_input: if given, the copy's output on it is checked against ``model``'s.
        atol: absolute tolerance of that check.
        rtol: relative tolerance of that check.

    Returns:
        The folded eval-mode copy.

    Raises:
        ConfigError: torch.fx cannot trace ``model``.
        SfpkError: the copy's output on ``example_input`` differs from ``model``'s.

    Example:
        >>> from sfpk.models import create
        >>> net = create("resnet20", num_classes=10)
        >>> folded = fold_batchnorm(net.eval(), torch.randn(2, 3, 32, 32))
        >>> any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        False
    """
    work = copy.deepcopy(model).eval()
    graph_module = _trace(work)
    if example_input is not None:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    nodes = list(graph_module.graph.nodes)
    calls = Counter(str(n.target) for n in nodes if n.op == "call_module")
    for node in nodes:
        source = _foldable(graph_module, node, calls)
        if source is None:
            continue
        producer = graph_module.get_submodule(str(source.target))
        norm = graph_module.get_submodule(str(node.target))
        fuse = fuse_linear_bn_eval if isinstance(producer, nn.Linear) else fuse_conv_bn_eval
        _set_module(graph_module, str(source.target), fuse(producer, norm))
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    if example_input is not None:
        _check_same_output(model, graph_module, example_input, atol, rtol)
    return graph_module.eval()


def _check_same_output(
    model: nn.Module, folded: nn.Module, example_input: Tensor, atol: float, rtol: float
) -> None:
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected: Any = reference(example_input)
        got: Any = folded(example_input)
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    except AssertionError as error:
        raise SfpkError(
            f"the BatchNorm-folded model's output differs from the model's "
            f"(atol={atol}, rtol={rtol}): {error}"
        ) from None
