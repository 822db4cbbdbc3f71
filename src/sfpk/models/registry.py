"""The model registry: ``register_model``, ``create`` / ``create_model``, ``list_models``.

A builder is a function ``name(*, num_classes, input_shape=None, **options) -> nn.Module``.
Registering it under its function name makes it available to :func:`create`, the CLI and
the model tests (which parametrize over :func:`list_models`).

Names ``<prefix>:<name>`` go to the external library registered for the prefix with
:func:`register_prefix` (``tv:`` torchvision and ``timm:`` timm, in
:mod:`sfpk.models.external`; ``hf:`` Hugging Face transformers, in :mod:`sfpk.models.hf`);
:func:`external_prefixes` is the one list of them. Both dicts follow the pruner registry's
pattern: a taken name is refused, an unknown one raises :class:`UnknownNameError` with the
choices. Options a builder does not declare are refused, for prefixes too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..errors import ConfigError, UnknownNameError

__all__ = [
    "register_model",
    "register_prefix",
    "create",
    "create_model",
    "list_models",
    "model_builder",
    "external_prefixes",
    "is_external",
    "count_parameters",
    "image_channels",
    "init_kaiming_normal",
]

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}
# prefix -> ``build(name_without_prefix, *, num_classes, **options)`` of an external library
_PREFIXES: dict[str, Builder] = {}


def register_model(fn: B | None = None, *, name: str | None = None) -> Any:
    """Register a model builder under ``name`` (default: the function's name, lowercased).

    Usable bare (``@register_model``) or with a name (``@register_model(name="wrn28x2")``).

    Args:
        fn: The builder, when used bare.
        name: Registry key; lowercase.

    Returns:
        The builder, unchanged (or a decorator when called with only ``name``).

    Raises:
        ConfigError: If the name is already registered.
    """

    def decorate(builder: B) -> B:
        key = (name or builder.__name__).lower()
        if key in _REGISTRY:
            raise ConfigError(f"model name {key!r} is already registered")
        _REGISTRY[key] = builder
        return builder

    return decorate(fn) if fn is not None else decorate


def register_prefix(prefix: str) -> Callable[[B], B]:
    """Resolve model names ``<prefix>:<name>`` with the decorated function.

    The function builds a model of an external library:
    ``build(name, *, num_classes, **options) -> nn.Module``, ``name`` without the prefix.

    Raises:
        ConfigError: If the prefix is already registered.
    """
    key = prefix.lower()

    def decorate(build: B) -> B:
        if key in _PREFIXES:
            raise ConfigError(f"model prefix {key!r} is already registered")
        _PREFIXES[key] = build
        return build

    return decorate


def list_models() -> list[str]:
    """Names of sfpk's own models, sorted (``<prefix>:`` names are not listed)."""
    return sorted(_REGISTRY)


def external_prefixes() -> list[str]:
    """The prefixes of external model names (``tv``, ``timm``), sorted."""
    return sorted(_PREFIXES)


def is_external(name: str) -> bool:
    """Whether ``name`` is ``<prefix>:<model>`` with a registered prefix (case-insensitive)."""
    prefix, sep, _ = str(name).partition(":")
    return bool(sep) and prefix.lower() in _PREFIXES


def model_builder(name: str) -> Builder:
    """The builder registered as ``name`` (case-insensitive).

    Raises:
        UnknownNameError: If the name is not registered (the message lists the choices).
    """
    builder = _REGISTRY.get(str(name).lower())
    if builder is None:
        raise UnknownNameError("model", name, list_models())
    return builder


def _check_options(name: str, builder: Builder, options: dict[str, Any]) -> None:
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    # ``name`` is the model name an external prefix's builder receives, not an option
    accepted = [p for p in parameters if p not in ("name", "num_classes", "input_shape")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no options'}"
        )


def create(
    name: str, *, num_classes: int, input_shape: tuple[int, ...] | None = None, **options: Any
) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: A name from :func:`list_models` (case-insensitive), or ``<prefix>:<name>``
            with a prefix of :func:`external_prefixes`, e.g. ``tv:resnet18`` (torchvision)
            or ``timm:resnet18`` (needs ``sfpk[vision]``), or ``hf:<hub id or folder>``
            (needs ``sfpk[hf]``).
        num_classes: Number of output classes.
        input_shape: Shape of one input sample, e.g. ``(40,)`` or ``(3, 32, 32)``; sets the
            input size of MLPs and the input channels of conv nets. ``None`` uses the
            model's natural input.
        **options: Model-specific options, e.g. ``depth`` and ``width`` for ``wrn``.

    Returns:
        The model, in training mode.

    Raises:
        UnknownNameError: If the name is not registered.
        ConfigError: If an option is unknown or invalid, or an external library is missing.

    Example:
        >>> model = create("resnet20", num_classes=100)
        >>> count_parameters(model) > 270_000
        True
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be >= 1")
    if is_external(name):
        prefix, _, model_name = name.partition(":")
        build = _PREFIXES[prefix.lower()]
        _check_options(name, build, options)
        return build(model_name, num_classes=num_classes, **options)
    builder = model_builder(name)
    _check_options(name, builder, options)
    try:
        return builder(num_classes=num_classes, input_shape=input_shape, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        if not options:
            raise
        # a value of the wrong type or range, e.g. hidden=-5 where a list of widths is due
        raise ConfigError(f"model {name!r} rejected options {options!r}: {exc}") from exc


create_model = create


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def init_kaiming_normal(model: nn.Module) -> None:
    """Kaiming-normal conv and linear weights, zero biases (OpenLTH / SynFlow CIFAR nets)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def image_channels(input_shape: tuple[int, ...] | None, default: int = 3) -> int:
    """Input channels of an image model from ``input_shape`` ``(C, H, W)``; ``default`` if None.

    Raises:
        ConfigError: If the shape is not three-dimensional.
    """
    if input_shape is None:
        return default
    if len(input_shape) != 3:
        raise ConfigError(f"image models need input_shape (C, H, W), got {tuple(input_shape)}")
    return int(input_shape[0])
