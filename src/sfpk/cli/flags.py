"""The config as command-line flags: one flag per knob, and the dotted keys they set.

Flags are generated from the config dataclasses (:mod:`sfpk.config.core`), so a new knob gets
its flag, help text and type without further code. Each flag stores into the dotted key
``"section.field"`` with ``default=SUPPRESS``: only flags the user actually typed reach
:func:`overrides_from_args`, so a CLI default never overwrites a YAML value (style.md §6).

Kept apart from :mod:`sfpk.cli` because two command-line front ends share it: the ``sfpk``
pipeline commands, and :mod:`sfpk.cli.reference`, which prints the native command equivalent
to a reference command line (:func:`args_for`, the way back from keys to flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from ..config.core import SECTIONS, Config
from ..config.layers import yaml_value
from ..errors import ConfigError

__all__ = [
    "USED_BY",
    "check_pretrain_flags_apply",
    "add_config_flags",
    "flag_for",
    "overrides_from_args",
    "args_for",
    "used_by",
    "check_flags_apply",
]

_ALL = ("pretrain", "oneshot", "iterative")
_PRUNING = ("oneshot", "iterative")

# Which pipelines read each config key (the longest matching prefix decides). A flag the
# user types for a pipeline that does not read it would have no effect: that is an error.
USED_BY: dict[str, tuple[str, ...]] = {
    "data.": _ALL,
    "model.": _ALL,
    "pretrain.": _ALL,  # oneshot / iterative pretrain unless model.checkpoint is given
    "run.": _ALL,
    "train.": _PRUNING,
    "train.report_last_k": _ALL,  # pretrain reports its last k epochs too
    "train.warmup_epochs": ("oneshot",),  # iterative fine-tuning has no warm-up
    "train.cold_start_lr": ("oneshot",),
    "train.round_epochs": ("iterative",),  # between rounds: oneshot has no such phase
    "train.round_lr": ("iterative",),
    "train.round_lr_end": ("iterative",),
    "prune.": _PRUNING,
}


def _flag_name(section: str, field: dataclasses.Field) -> str:
    flag = field.metadata.get("flag")
    if flag is None:
        flag = f"{section}-{field.name}" if section == "pretrain" else field.name
    return "--" + flag.replace("_", "-")


def _list_of(kind: type) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {kind.__name__}"
            ) from None

    return parse


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} must look like KEY=VALUE")
    try:
        return key.strip(), yaml_value(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag_kwargs(hint: Any) -> dict[str, Any]:
    """How argparse parses a value of the annotated type ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base is list:
        return {"type": _list_of(typing.get_args(hint)[0]), "metavar": "A,B,..."}
    if base is dict:
        return {"type": _option, "action": "append", "metavar": "KEY=VALUE"}
    if base is Literal:
        # No argparse `choices`: the config's own check gives the one-line error.
        return {"type": str, "metavar": "{" + ",".join(typing.get_args(hint)) + "}"}
    return {"type": base}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config knob (dest ``"section.field"``, default SUPPRESS)."""
    sections = typing.get_type_hints(Config)
    for section in SECTIONS:
        cls = sections[section]
        group = parser.add_argument_group(f"{section} ({cls.__doc__.splitlines()[0]})")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            group.add_argument(
                _flag_name(section, field),
                dest=f"{section}.{field.name}",
                default=argparse.SUPPRESS,
                help=field.metadata.get("help", ""),
                **_flag_kwargs(hints[field.name]),
            )


def flag_for(key: str) -> str:
    """The command-line flag of the dotted config key ``key`` (e.g. ``"train.lr"`` -> ``--lr``).

    Raises:
        KeyError: ``key`` is not a config knob.
    """
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(Config).get(section) if section in SECTIONS else None
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    if name not in fields:
        raise KeyError(f"no config key {key!r}")
    return _flag_name(section, fields[name])


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys the user typed on the command line, with their values."""
    out = {}
    for key, value in vars(args).items():
        if "." not in key:
            continue
        out[key] = dict(value) if key.endswith(".options") else value
    return out


def args_for(overrides: dict[str, Any]) -> list[str]:
    """The flags that set the dotted keys ``overrides``; the inverse of overrides_from_args.

    Example:
        >>> args_for({"train.lr": 0.01, "run.quiet": True})
        ['--lr', '0.01', '--quiet']
    """
    argv: list[str] = []
    for key, value in overrides.items():
        flag = flag_for(key)
        if isinstance(value, dict):
            for name, item in value.items():
                argv += [flag, f"{name}={_text(item)}"]
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, ",".join(_text(v) for v in value)]
        else:
            argv += [flag, _text(value)]
    return argv


def _text(value: Any) -> str:
    """``value`` as the flag parsers read it back (YAML ``null``, floats exactly)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def used_by(key: str) -> tuple[str, ...]:
    """The pipelines that read the dotted config key ``key`` (:data:`USED_BY`)."""
    matches = [prefix for prefix in USED_BY if key == prefix or key.startswith(prefix)]
    if not matches:
        raise KeyError(f"no config key {key!r}")
    return USED_BY[max(matches, key=len)]


def check_pretrain_flags_apply(
    pipeline: str, overrides: dict[str, Any], checkpoint: str | None
) -> None:
    """Raise ConfigError for a typed ``--pretrain-*`` flag that a run starting from
    ``checkpoint`` ignores: `sfpk oneshot|iterative --checkpoint` skips pretraining."""
    if checkpoint is None or pipeline not in _PRUNING:
        return
    stray = [key for key in overrides if key.startswith("pretrain.")]
    if stray:
        raise ConfigError(
            f"{flag_for(stray[0])} has no effect with --checkpoint: `sfpk {pipeline}` starts "
            "from those weights and skips pretraining"
        )


def check_flags_apply(pipeline: str, overrides: dict[str, Any]) -> None:
    """Raise ConfigError for a typed flag that has no effect in ``pipeline``.

    The rule is the table :data:`USED_BY`: a key the pipeline does not read is refused.

    Example:
        >>> check_flags_apply("oneshot", {"train.round_epochs": [3]})  # doctest: +SKIP
        ConfigError: --round-epochs has no effect in `sfpk oneshot` (read by: iterative)
    """
    for key in overrides:
        users = used_by(key)
        if pipeline not in users:
            hint = ""
            section, _, name = key.partition(".")
            if section == "train" and pipeline == "pretrain":
                try:
                    hint = f"; did you mean {flag_for('pretrain.' + name)}?"
                except KeyError:
                    hint = ""
            raise ConfigError(
                f"{flag_for(key)} has no effect in `sfpk {pipeline}` "
                f"(read by: {', '.join(users)}){hint}"
            )
