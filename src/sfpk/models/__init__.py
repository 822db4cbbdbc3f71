"""Model zoo and registry: ``create(name, num_classes=..., input_shape=...)``.

Every model is built from plain ``nn.Conv1d/Conv2d``, ``nn.Linear``, ``nn.BatchNorm``,
``nn.LayerNorm`` and ``nn.Embedding`` layers (no special masked layers), so generic
mask-based pruning works on all of them. Importing this package registers every builder of
the modules below, and the external ``tv:`` / ``timm:`` / ``hf:`` prefixes. May import
only :mod:`sfpk.errors` (``tests/api/test_architecture.py``).
"""

from __future__ import annotations

# Imported for their @register_model / @register_prefix side effect.
from . import (  # noqa: F401
    diffusion,
    external,
    hf,
    mobilenet,
    resnet_cifar,
    resnet_imagenet,
    small,
    transformer,
    vgg,
    wrn,
)
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
