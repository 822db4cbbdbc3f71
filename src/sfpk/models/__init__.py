"""Model zoo and registry: ``create(name, num_classes=..., input_shape=...)``.

Every model is built from plain ``nn.Conv1d/Conv2d``, ``nn.Linear`` and ``nn.BatchNorm``
layers (no special masked layers), so generic mask-based pruning works on all of them.
Importing this package registers every builder of the modules below, and the external
``tv:`` / ``timm:`` prefixes.
"""

from __future__ import annotations

# Imported for their @register_model / @register_prefix side effect.
from . import external, mobilenet, resnet_cifar, resnet_imagenet, small, vgg, wrn  # noqa: F401
from .registry import (
    count_parameters,
    create,
    create_model,
    external_prefixes,
    is_external,
    list_models,
    model_builder,
    register_model,
    register_prefix,
)
from .weights import load_weights

__all__ = [
    "create",
    "create_model",
    "list_models",
    "model_builder",
    "register_model",
    "register_prefix",
    "external_prefixes",
    "is_external",
    "load_weights",
    "count_parameters",
]
