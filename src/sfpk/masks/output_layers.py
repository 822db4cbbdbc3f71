"""Which layers produce a model's output, for any ``nn.Module``.

A filter mask removes whole output rows of a layer. In the layer that produces the model's
output those rows *are* the outputs: the classes of a classifier, the vocabulary of a
language model head. Removing them does not make the network smaller, it makes it unable to
answer (a classifier with half its class rows removed can reach at most 50 % accuracy), so
filter pruning leaves these layers unpruned by default (``protect_output`` of
:func:`sfpk.prune`). The reference implementation prunes them; ``sfpk reference`` does too.

How the layers are found, for a model we know nothing about:

1. A model may declare them: ``model.sfpk_output_layers = ("head",)`` (module names).
2. Otherwise the model runs once on an example input, in eval mode and with gradients
   recorded, while forward hooks note the autograd node that produced each layer's output.
   A walk back from the model's output tensors through the autograd graph stops at the
   first layer outputs it meets; those layers are the output layers. Ops after the layer
   (``log_softmax``, a temperature, a residual sum of two heads) are walked through, and a
   layer met only *behind* another layer is never an output layer.

A "layer" is any module that owns a weight of two or more dimensions (conv, linear, an
embedding, a custom projection): the walk must stop at a layer even when it is not
prunable, or the layer before an excluded LM head would be taken for the output layer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..model_state import ModelState

__all__ = ["declared_output_layers", "find_output_layers", "output_parameter_names"]


def declared_output_layers(model: nn.Module) -> list[str] | None:
    """The model's ``sfpk_output_layers`` (module names), checked; None if it declares none.

    Raises:
        ConfigError: the attribute is not a sequence of names of the model's modules.
    """
    declared = getattr(model, "sfpk_output_layers", None)
    if declared is None:
        return None
    if isinstance(declared, str) or not isinstance(declared, Sequence):
        raise ConfigError(
            f"{type(model).__name__}.sfpk_output_layers={declared!r} must be a sequence of "
            "module names, e.g. ('fc',)"
        )
    modules = dict(model.named_modules())
    unknown = [name for name in declared if name not in modules]
    if unknown:
        raise ConfigError(
            f"{type(model).__name__}.sfpk_output_layers names no module {unknown}; "
            f"modules with weights: {_layer_names(model)[:20]}"
        )
    return list(declared)


def find_output_layers(model: nn.Module, example_input: Any) -> list[str]:
    """Names of the modules whose outputs become ``model(example_input)``'s outputs.

    Traces one forward pass (see the module docstring); a model's declaration is read by
    :func:`declared_output_layers`, which needs no input. The model's modes, buffers and
    ``requires_grad`` flags are restored.

    Raises:
        ConfigError: the forward pass fails on the example input, or the output does not
            depend on any layer through autograd (a non-differentiable output such as an
            argmax): nothing to protect is then an error, not a reason to prune the outputs
            silently.
    """
    layers = {name: module for name, module in model.named_modules() if _is_layer(module)}
    produced: dict[Any, str] = {}

    def recorder(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            for tensor in _main_outputs(output):
                if tensor.grad_fn is not None:
                    produced.setdefault(tensor.grad_fn, name)

        return hook

    saved = ModelState(model)
    handles = [m.register_forward_hook(recorder(n)) for n, m in layers.items()]
    try:
        model.eval()
        for param in model.parameters():
            if param.is_floating_point():
                param.requires_grad_(True)
        # Autograd must record even inside a caller's inference_mode / no_grad; the input
        # is cloned there so that it is not an inference tensor. The trace draws no random
        # numbers the caller would notice.
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            example = example_input.clone() if isinstance(example_input, Tensor) else example_input
            try:
                output = model(example)
            except Exception as error:  # the user's model: name what sfpk was doing
                raise ConfigError(
                    f"finding the layer that produces {type(model).__name__}'s output: the "
                    f"model failed on one input of shape {_shape(example)} ({error}); "
                    "declare model.sfpk_output_layers or pass protect_output=False"
                ) from error
        found = _nearest_layers(_main_outputs(output), produced)
    finally:
        for handle in handles:
            handle.remove()
        saved.restore(model)
    if not found:
        raise ConfigError(
            f"{type(model).__name__}'s output depends on none of its {len(layers)} layers "
            "through autograd (is the output non-differentiable, e.g. an argmax?); declare "
            "model.sfpk_output_layers or pass protect_output=False"
        )
    order = list(layers)
    return sorted(found, key=order.index)


def output_parameter_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The qualified names of the parameters in the output ``layers`` (weight and bias; all
    of a declared container's, e.g. ``classifier = Sequential(Dropout, Linear)``)."""
    names = []
    for layer in layers:
        module = model.get_submodule(layer)
        prefix = f"{layer}." if layer else ""
        names += [prefix + name for name, _ in module.named_parameters()]
    return names


def _nearest_layers(outputs: list[Tensor], produced: dict[Any, str]) -> set[str]:
    """Walk back from ``outputs``' autograd nodes; collect the first recorded layers met."""
    found: set[str] = set()
    queue = deque(t.grad_fn for t in outputs if t.grad_fn is not None)
    seen = set(queue)
    while queue:
        node = queue.popleft()
        if node in produced:
            found.add(produced[node])
            continue  # layers behind an output layer are not output layers
        for parent, _ in node.next_functions:
            if parent is not None and parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return found


def _is_layer(module: nn.Module) -> bool:
    """A module that owns a weight of >= 2 dims: conv, linear, embedding or the like."""
    if "weight" not in module._parameters and not parametrize.is_parametrized(module, "weight"):
        return False  # not owned here (a container), or a plain attribute
    weight = getattr(module, "weight", None)  # parametrized (weight norm): computed on access
    return isinstance(weight, Tensor) and weight.dim() >= 2


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if _is_layer(module)]


def _main_outputs(value: Any) -> list[Tensor]:
    """The model's main output tensors: the tensor itself; of a dict or a transformers
    ``ModelOutput``, its ``logits`` (else its first value); of a tuple or list, its first
    item. Hidden states, caches and auxiliary outputs that models return beside the main
    one would make every layer they come from an "output layer"."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):  # includes ModelOutput
        if "logits" in value:
            return _main_outputs(value["logits"])
        return _main_outputs(next(iter(value.values()))) if value else []
    if isinstance(value, (tuple, list)):
        return _main_outputs(value[0]) if value else []
    return []
