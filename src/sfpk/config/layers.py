"""Layered settings: nested dicts merged on top of each other, typed dataclasses built from them.

The machinery under :func:`sfpk.config.core.build_config`, which knows nothing of sfpk's own
sections: a layer (a YAML recipe, the dotted keys of typed flags) is merged into the
defaults, rejecting keys the defaults do not have (with close matches, style.md §6), and the
result becomes nested dataclasses, every value coerced to its field's annotation.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, check_bounds
from ..errors import coerce as coerce_value

__all__ = ["read_yaml", "yaml_value", "merge", "nest", "from_dict", "coerce"]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (1.1: a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """The value a YAML scalar or flow collection spells (``--option KEY=VALUE``).

    Raises:
        ConfigError: not valid YAML.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{text!r} is not a valid value: {str(exc).splitlines()[0]}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds (empty for an empty file).

    Raises:
        ConfigError: the file is missing, not valid YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def merge(
    base: dict[str, Any],
    update: dict[str, Any],
    *,
    free_dicts: Collection[tuple[str, ...]] = (),
    prefix: str = "",
) -> None:
    """Merge ``update`` into ``base`` in place, rejecting keys ``base`` does not have.

    Args:
        base: nested dicts holding every allowed key (the defaults).
        update: a layer of the same shape, or a part of it.
        free_dicts: paths (``("prune", "options")``) of dicts with free keys; they are
            merged key-wise without checking the keys.
        prefix: dotted path of ``base``, for messages.

    Raises:
        ConfigError: an unknown key (with close matches), or a value where a mapping is due.
    """
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {name!r}{hint}")
        if tuple(name.split(".")) in free_dicts:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping of option names to values")
            base[key] = {**base[key], **value}
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping (a config section)")
            merge(base[key], value, free_dicts=free_dicts, prefix=f"{name}.")
        else:
            base[key] = value


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"prune.sparsity": 0.9}`` -> ``{"prune": {"sparsity": 0.9}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the annotated type ``hint``, or ConfigError naming ``name``.

    :func:`sfpk.errors.coerce` (strict types, finite numbers, integral floats become ints),
    except that a single value where a list is due becomes a one-item list (YAML
    ``exclude: fc.weight``).
    """
    inner = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and value is not None:
        inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if typing.get_origin(inner) is list and not isinstance(value, list | tuple):
        value = [value]
    return coerce_value(name, value, hint)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, coercing each value to its annotation.

    Fields whose annotation is a dataclass are built recursively from their sub-dict.
    ``data`` must hold every field (merge a layer into the defaults first).
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint, value, name = hints[f.name], data[f.name], f"{prefix}{f.name}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[f.name] = from_dict(hint, value, prefix=f"{name}.")
        else:
            values[f.name] = check_bounds(name, coerce(name, value, hint), f.metadata)
    return cls(**values)
