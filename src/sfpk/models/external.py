"""Models from torchvision (``tv:<name>``) and timm (``timm:<name>``), imported lazily.

Neither library is a core dependency; both come with ``pip install 'sfpk[vision]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError

__all__ = ["EXTERNAL_PREFIXES", "create_external"]

# prefix -> importable module
EXTERNAL_PREFIXES: dict[str, str] = {"tv": "torchvision", "timm": "timm"}


def _import(prefix: str) -> Any:
    module = EXTERNAL_PREFIXES[prefix]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"model names starting with '{prefix}:' need {module}, which is not installed; "
            "pip install 'sfpk[vision]'"
        ) from None


def create_external(name: str, *, num_classes: int, **options: Any) -> nn.Module:
    """Build ``tv:<name>`` with torchvision or ``timm:<name>`` with timm (random init).

    Args:
        name: Prefixed model name, e.g. ``"tv:resnet18"`` or ``"timm:resnet18"``.
        num_classes: Number of output classes.
        **options: Passed to ``torchvision.models.get_model`` / ``timm.create_model``.

    Returns:
        The model.

    Raises:
        ConfigError: If the library is not installed.
        UnknownNameError: If the library does not know the model.
    """
    prefix, _, model_name = name.partition(":")
    prefix = prefix.lower()
    if prefix == "tv":
        library = _import(prefix).models
        choices = library.list_models()
        if model_name not in choices:
            raise UnknownNameError("torchvision model", model_name, choices)
        return library.get_model(model_name, num_classes=num_classes, **options)
    if prefix == "timm":
        library = _import(prefix)
        choices = library.list_models()
        if model_name not in choices:
            raise UnknownNameError("timm model", model_name, choices)
        return library.create_model(model_name, num_classes=num_classes, **options)
    raise ConfigError(f"unknown model prefix {prefix!r}; use one of: tv, timm")
