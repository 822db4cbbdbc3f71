"""The errors sfpk raises on purpose, and the small validators that raise them.

Every message names the bad value and, where there is a closed set, the allowed ones. The CLI
catches :class:`SfpkError`, prints its message on one line and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "SfpkError",
    "ConfigError",
    "UnknownNameError",
    "MaskMismatchError",
    "DataError",
    "CheckpointError",
    "check_fraction",
    "check_positive",
    "check_choice",
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


class CheckpointError(SfpkError):
    """A checkpoint, mask or model file is missing, corrupted or of the wrong architecture."""


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` if it lies strictly inside (0, 1), else raise :class:`ConfigError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number in (0, 1)") from None
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{name}={value!r} must be in (0, 1) (fraction of weights removed)")
    return number


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is > 0 (or >= 0 with ``allow_zero``), else raise ConfigError."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} must be {bound}")
    return value


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`UnknownNameError`."""
    choices = list(choices)
    if value not in choices:
        raise UnknownNameError(name, value, choices)
    return value
