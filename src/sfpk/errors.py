"""The errors sfpk raises on purpose, and the small validators that raise them.

Every message names the bad value and, where there is a closed set, the allowed ones. The CLI
catches :class:`SfpkError`, prints its message on one line and exits with status 2.

One validation layer serves every user-settable value (config sections, method options,
model options; from a flag, YAML or the API): :func:`coerce` checks a value against its
annotation (type and finiteness: ``2.5`` is not an ``int``, ``"0.5"`` is not a ``float``,
``nan`` is not a number), :func:`check_bounds` against its field's range metadata
(:func:`bounds`), and :func:`resolve_fields` / :func:`check_fields` do both for every field
of a dataclass. Values come out resolved: an integral float such as ``1e3`` becomes the
``int`` 1000, a list a ``list``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

__all__ = [
    "SfpkError",
    "ConfigError",
    "UnknownNameError",
    "MaskMismatchError",
    "DataError",
    "DataMismatchError",
    "CheckpointError",
    "NonFiniteError",
    "SparsityCheckError",
    "check_number",
    "check_fraction",
    "check_positive",
    "check_choice",
    "bounds",
    "check_bounds",
    "coerce",
    "resolve_fields",
    "check_fields",
]


class SfpkError(Exception):
    """Every error sfpk raises on purpose."""


class ConfigError(SfpkError, ValueError):
    """A setting has a value outside the allowed range or set."""


class UnknownNameError(ConfigError, KeyError):
    """A name (method, model, data set, ...) is not in its registry."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(str(name), choices, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        message = f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}.{hint}"
        super().__init__(message)
        self.kind, self.name, self.choices = kind, name, choices

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class MaskMismatchError(SfpkError, ValueError):
    """A mask set does not fit the model it is used with."""


class DataError(SfpkError):
    """A data set directory is missing or not in the expected layout."""


class DataMismatchError(SfpkError, ValueError):
    """The pruning data does not fit the model or the loss: the first forward or loss of a
    pruning call failed on it, or its targets lie outside the model's classes."""


class CheckpointError(SfpkError):
    """A checkpoint, mask or model file is missing, corrupted or of the wrong architecture."""


class NonFiniteError(SfpkError, ValueError):
    """A NaN or infinity where only finite numbers make sense (weights, inputs, loss, scores)."""


class SparsityCheckError(SfpkError):
    """The achieved sparsity after pruning differs from the requested one (or the masks
    break their structure's rules, e.g. a ``round_to`` width); :mod:`sfpk.selection.topk`."""


def check_number(name: str, value: Any, *, integer: bool = False) -> Any:
    """``value`` as a finite number (an ``int`` with ``integer``), else ConfigError.

    Booleans and strings are not numbers; an integral float (``3.0``, YAML's ``1e3``) is
    accepted as an int, a fractional one (``2.5``) is not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r} must be {kind}, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    if not integer:
        return value if isinstance(value, float | int) else float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if not float(value).is_integer():
        raise ConfigError(f"{name}={value!r} must be an integer (a whole number)")
    return int(value)


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` if it is a number strictly inside (0, 1), else raise ConfigError."""
    try:
        number = check_number(name, value)
    except ConfigError:
        raise ConfigError(f"{name}={value!r} must be a finite number in (0, 1)") from None
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{name}={value!r} must be in (0, 1) (fraction of weights removed)")
    return float(number)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> Any:
    """Return ``value`` if it is a finite number > 0 (>= 0 with ``allow_zero``), else raise."""
    check_number(name, value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} must be {bound}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`UnknownNameError`."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise UnknownNameError(name, value, choices)
    return value


_BOUNDS = {"ge": (">=", float.__ge__), "gt": (">", float.__gt__),
           "le": ("<=", float.__le__), "lt": ("<", float.__lt__)}  # fmt: skip


def bounds(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> dict[str, float]:
    """Range metadata for a dataclass field, checked by :func:`check_bounds`.

    Example:
        >>> seed: int = field(default=0, metadata=bounds(ge=0, le=2**63 - 1))  # doctest: +SKIP
    """
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    return {key: value for key, value in given.items() if value is not None}


def check_bounds(name: str, value: Any, metadata: Mapping[str, Any]) -> Any:
    """Return ``value`` if it satisfies the :func:`bounds` in ``metadata`` (None passes)."""
    if value is None:
        return value
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        for key, (sign, holds) in _BOUNDS.items():
            bound = metadata.get(key)
            if bound is not None and not holds(float(item), float(bound)):
                shown = int(bound) if float(bound).is_integer() else bound
                raise ConfigError(f"{name}={value!r} must be {sign} {shown}")
    return value


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotated type ``hint`` and resolved, or ConfigError.

    Handles ``X | None``, ``list[X]`` / ``tuple[X, ...]`` / ``Sequence[X]`` (resolved to a
    list or tuple), ``dict[...]``, ``Literal[...]`` (an UnknownNameError lists the
    choices), bool, int (integral floats become ints), float (finite; ints become floats)
    and str. Other annotations (callables, tensors, ``Any``) are left to their users.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return value
        return coerce(name, value, inner[0])
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r} must be a list")
        item = args[0] if args else Any
        items = [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return dict(value)
    if origin is Literal:
        return check_choice(name, value, [str(a) for a in args])
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if hint is int:
        return check_number(name, value, integer=True)
    if hint is float:
        return float(check_number(name, value))
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation only importable for type checkers
        return {}


def resolve_fields(cls: type, values: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """``values`` (a subset of dataclass ``cls``'s fields) coerced to their annotations and
    checked against their range metadata; names in messages are ``prefix + field``.

    Raises:
        ConfigError: a value of the wrong type, not finite, or out of its range.
    """
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        field = fields.get(key)
        hint = hints.get(key, Any)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out[key] = value
            continue
        value = coerce(name, value, hint)
        out[key] = check_bounds(name, value, field.metadata) if field is not None else value
    return out


def check_fields(obj: Any, *, prefix: str = "") -> None:
    """Check every init field of dataclass instance ``obj`` (:func:`resolve_fields`) and
    store the resolved values back (also on a frozen dataclass: call from ``__post_init__``).
    """
    current = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    for key, value in resolve_fields(type(obj), current, prefix=prefix).items():
        if value is not current[key]:
            object.__setattr__(obj, key, value)
