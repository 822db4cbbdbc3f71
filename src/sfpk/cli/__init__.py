"""The ``sfpk`` command (also ``python -m sfpk``): pipelines, resume, and registry listings.

Subcommands live in :mod:`sfpk.cli.commands` (the registry :data:`COMMANDS` and every
subcommand); this module builds the parser from the registry and runs a command line. The
package also owns the typed flags of the config knobs (:mod:`.flags`) and ``sfpk reference``:
the reference implementation's flag table (:mod:`.reference_flags`) and its translation to a
native config (:mod:`.reference`, usable without the commands). The CLI is the top layer:
it may import every part of sfpk, and the only part that prints for humans or exits
(``tests/api/test_architecture.py``).

Errors sfpk raises on purpose (:class:`sfpk.SfpkError`) and file-system errors (``OSError``,
e.g. ``--out`` naming a file) are printed on one line (``sfpk: error: ...``) and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from ..errors import SfpkError

# Importing the subcommand modules registers their commands, in this order.
from . import prune as _prune  # noqa: F401  (prune: layer-wise LLM pruning, after the others)
from .commands import (
    COMMANDS,
    PASSTHROUGH_OWN_FLAGS,
    Terminated,
    sigterm_interrupts,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("sfpk")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (status 2), like sfpk's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sfpk: error: {self.prog}: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``sfpk`` argument parser with every registered subcommand."""
    parser = _Parser(
        prog="sfpk", description="Probabilistic neural-network pruning (SFPK, SpODE, baselines)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``sfpk`` command; returns the exit status (2 on an sfpk error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    extra: list[str] = []
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].passthrough:
        # argparse would reorder unknown flags and their values; keep them verbatim.
        own = {"-h", "--help", *PASSTHROUGH_OWN_FLAGS}
        extra = [a for a in argv[1:] if a not in own]
        argv = [argv[0], *(a for a in argv[1:] if a in own)]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line): a status, in-process too
        return exc.code if isinstance(exc.code, int) else 2
    args.extra = extra
    quiet = getattr(args, "run.quiet", False) or getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True
    )
    try:
        with sigterm_interrupts():
            return COMMANDS[args.command].run(args)
    except (SfpkError, OSError) as exc:  # OSError: e.g. --out or -o naming a file
        message = " ".join(str(exc).split())  # exactly one line
        sys.stderr.write(f"sfpk: error: {message}\n")  # one write: ranks' lines never interleave
        return 2
    except KeyboardInterrupt as exc:  # outside a run (the pipelines report their own)
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        sys.stderr.write(f"sfpk: {what}\n")
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
