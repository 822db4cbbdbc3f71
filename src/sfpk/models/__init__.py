"""Model zoo and registry: ``create(name, num_classes=..., input_shape=...)``.

Every model is built from plain ``nn.Conv1d/Conv2d``, ``nn.Linear`` and ``nn.BatchNorm``
layers (no special masked layers), so generic mask-based pruning works on all of them.
Importing this package registers every builder of the modules below.
"""

from __future__ import annotations

# Imported for their @register_model side effect, in registry-listing order.
from . import mobilenet, resnet_cifar, resnet_imagenet, small, vgg, wrn  # noqa: F401
from .registry import count_parameters, create, create_model, list_models, register_model
from .weights import load_weights

__all__ = [
    "create",
    "create_model",
    "list_models",
    "register_model",
    "load_weights",
    "count_parameters",
]
