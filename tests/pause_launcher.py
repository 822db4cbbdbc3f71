"""Run the ``sfpk`` command and SIGKILL it at a chosen checkpoint (the resume tests' kill point).

Usage (also as the script of ``torchrun``)::

    python tests/pause_launcher.py [before:]LABEL -- <sfpk arguments>

It wraps :meth:`sfpk.pipelines.context.Context.checkpoint` and then calls
:func:`sfpk.cli.main`. Every checkpoint gets a label derived from what it saves
(:func:`checkpoint_label`):

* ``KEY:epoch:N``: training phase ``KEY`` with ``N`` epochs done (``progress.current``
  holds ``{"key", "epoch", ...}``), e.g. ``finetune:epoch:2``, ``tune:0:epoch:1``;
* ``KEY:step:N``: particle pruning call ``KEY`` after engine step ``N`` (``progress.current``
  holds ``{"key", "pruner"}``; the pruner state's ``"step"``), e.g. ``prune:1:step:4``;
* ``KEY:done``: phase ``KEY`` completed (``progress.done[-1]``), e.g. ``prune:0:done``.

When the label matches, the main process (rank 0 under ``torchrun``, the one that writes the
run directory) prints ``pause_launcher: SIGKILL at LABEL`` to stderr and sends itself
SIGKILL: no cleanup, no ``finally`` blocks, exactly as an outside ``kill -9``. Plain ``LABEL``
kills it right after that checkpoint is on disk; ``before:LABEL`` just before it is written
(the epoch's metrics row is already in ``metrics.csv``, the checkpoint not yet). A run that
ends without meeting the label exits with status 3 and lists the labels it met.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sfpk.cli import main
from sfpk.pipelines.context import Context, Progress
from sfpk.training import distributed

KILLED = "pause_launcher: SIGKILL at {}"
NOT_REACHED = 3


def checkpoint_label(progress: Progress) -> str:
    """The label of the checkpoint that is about to save ``progress`` (see the module doc)."""
    current: dict[str, Any] | None = progress.current
    if current is None:
        return f"{progress.done[-1]}:done" if progress.done else "start"
    if "pruner" in current:
        return f"{current['key']}:step:{current['pruner']['step']}"
    return f"{current['key']}:epoch:{current['epoch']}"


def _die(label: str) -> None:
    print(KILLED.format(label), file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def install(target: str) -> list[str]:
    """Wrap ``Context.checkpoint`` to SIGKILL the main process at ``target``.

    Returns:
        The list the wrapper appends every label it meets to.
    """
    when, label = ("before", target[7:]) if target.startswith("before:") else ("after", target)
    original = Context.checkpoint
    seen: list[str] = []

    def checkpoint(self: Context) -> None:
        current = checkpoint_label(self.progress)
        seen.append(current)
        hit = current == label and distributed.is_main()
        if hit and when == "before":
            _die(target)
        original(self)
        if hit:
            _die(target)

    Context.checkpoint = checkpoint  # type: ignore[method-assign]
    return seen


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        print(f"usage: {sys.argv[0]} [before:]LABEL -- <sfpk arguments>", file=sys.stderr)
        return 2
    seen = install(argv[0])
    status = main(argv[2:])
    if status != 0:
        return status
    print(
        f"pause_launcher: the run ended without reaching {argv[0]!r}; "
        f"checkpoints: {', '.join(seen)}",
        file=sys.stderr,
    )
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
