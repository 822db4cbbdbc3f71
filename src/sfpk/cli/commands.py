"""The ``sfpk`` subcommand registry: :data:`COMMANDS`, filled by :func:`command`.

Adding a subcommand is a decorated function::

    @command("reference", help="...", configure=add_reference_flags)
    def _reference(args: argparse.Namespace) -> int: ...

The subcommands themselves live in :mod:`sfpk.cli.pipelines` (the pipelines and resume) and
:mod:`sfpk.cli.tools` (the others); :mod:`sfpk.cli` builds the parser from this registry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "command"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, a function adding its flags, and its body."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False  # unknown flags go to ``args.extra`` (sfpk reference)


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    passthrough: bool = False,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated function as subcommand ``name`` (returns exit status)."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} is already registered")
        COMMANDS[name] = Command(name, help, configure or (lambda parser: None), run, passthrough)
        return run

    return decorate
