"""Models from torchvision (``tv:<name>``) and timm (``timm:<name>``), imported lazily.

Neither library is a core dependency; both come with ``pip install 'sfpk[vision]'``. Each
prefix is registered once, here, with :func:`sfpk.models.registry.register_prefix`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError
from .registry import register_prefix

__all__ = ["TORCHVISION_PREFIX", "TIMM_PREFIX", "torchvision_model", "timm_model"]

TORCHVISION_PREFIX = "tv"
TIMM_PREFIX = "timm"


def _import(module: str, prefix: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"model names starting with '{prefix}:' need {module}, which is not installed; "
            "pip install 'sfpk[vision]'"
        ) from None


def _build(
    library: str,
    choices: Iterable[str],
    build: Callable[..., nn.Module],
    name: str,
    options: dict[str, Any],
) -> nn.Module:
    choices = list(choices)
    if name not in choices:
        raise UnknownNameError(f"{library} model", name, choices)
    return build(name, **options)


@register_prefix(TORCHVISION_PREFIX)
def torchvision_model(name: str, *, num_classes: int, **options: Any) -> nn.Module:
    """Build torchvision's ``name`` (random init) with ``torchvision.models.get_model``.

    Raises:
        ConfigError: If torchvision is not installed.
        UnknownNameError: If torchvision does not know the model.
    """
    library = _import("torchvision", TORCHVISION_PREFIX).models
    options = {"num_classes": num_classes, **options}
    return _build("torchvision", library.list_models(), library.get_model, name, options)


@register_prefix(TIMM_PREFIX)
def timm_model(name: str, *, num_classes: int, **options: Any) -> nn.Module:
    """Build timm's ``name`` (random init) with ``timm.create_model``.

    Raises:
        ConfigError: If timm is not installed.
        UnknownNameError: If timm does not know the model.
    """
    library = _import("timm", TIMM_PREFIX)
    options = {"num_classes": num_classes, **options}
    return _build("timm", library.list_models(), library.create_model, name, options)
