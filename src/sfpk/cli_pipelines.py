"""The ``sfpk`` pipeline subcommands (pretrain, oneshot, iterative, resume) and how a run
executes under the command: process group, SIGTERM, the summary printed at the end.

Pipeline flags are generated from the config dataclasses (:mod:`sfpk.config_flags`), one per
knob, with ``default=SUPPRESS`` so that only flags the user typed override the YAML recipe.

Launched by ``torchrun`` (``torchrun --nproc_per_node W -m sfpk oneshot ...``), the pipeline
commands join the process group the launcher describes: every rank runs the pipeline, SFPK /
SpODE split their particle passes over the ranks, and only rank 0 logs below WARNING, shows
progress bars, writes the run directory and prints the summary. SIGTERM stops a run as
Ctrl-C does (:class:`Terminated`): marked interrupted, resumable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import distributed, pipelines
from .cli_commands import command
from .config import build_config, demo_preset, load_config
from .config_flags import (
    add_config_flags,
    check_flags_apply,
    check_pretrain_flags_apply,
    overrides_from_args,
)
from .lm_prune import check_not_prune_run
from .run import read_status

__all__ = ["Terminated", "in_process_group", "sigterm_interrupts"]


_DEMO_HELP = (
    "preset for a quick demo (about a minute on 2 idle CPU cores): mnist1d / cnn1d, "
    "pretrain 15 epochs, prune with the method's defaults (SFPK: the paper's N=100 steps, "
    "n=10 particles), fine-tune 10 epochs; YAML and flags still override it"
)


def _pipeline_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML recipe (see configs/)")
    parser.add_argument("--demo", action="store_true", help=_DEMO_HELP)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory"
    )
    add_config_flags(parser)


def _run_pipeline(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    check_flags_apply(args.command, overrides)
    config = build_config(args.command, yaml_path=args.config, overrides=overrides, demo=args.demo)
    check_pretrain_flags_apply(args.command, overrides, config.model.checkpoint)
    if args.demo:
        options = json.dumps(config.prune.options) if config.prune.options else "defaults"
        print(
            f"sfpk: --demo preset: {json.dumps(demo_preset())}; {config.prune.method} options: "
            f"{options}",
            file=sys.stderr,
        )
    return in_process_group(
        config.run.device,
        lambda: pipelines.start(config, overwrite=args.overwrite),
        out=str(config.run.out),
    )


def in_process_group(device: str, body: Callable[[], dict[str, Any]], *, out: str) -> int:
    """Run the pipeline ``body`` inside the ``torchrun`` process group, if launched by one.

    ``device`` (the run's setting) picks the backend: gloo on CPU, nccl on CUDA (each rank
    pinned to GPU ``LOCAL_RANK``). Ranks other than 0 log warnings only; rank 0 prints the
    summary. The group is destroyed however ``body`` ends. Without torchrun this simply runs
    ``body`` and prints.
    """
    distributed.init_from_env(device)
    try:
        main = distributed.is_main()
        if not main:
            logging.getLogger().setLevel(logging.WARNING)
        summary = body()
        if main:
            _print_summary(out, summary)
        distributed.barrier()  # leave together: rank 0 writes last, the others wait
    except KeyboardInterrupt as exc:
        if distributed.is_main():
            sys.stderr.write(_interrupted_message(exc, out))
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        distributed.shutdown()
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops as on Ctrl-C (marked, resumable)."""


def _interrupted_message(exc: KeyboardInterrupt, out: str) -> str:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    if read_status(out).get("status") == "interrupted":
        return f"sfpk: {what}; continue with `sfpk resume {shlex.quote(out)}`\n"
    return f"sfpk: {what} before the run directory {out} was created; nothing to resume\n"


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


for _name, _help in (
    ("pretrain", "train a dense model (model selection on validation accuracy)"),
    ("oneshot", "prune once (K rounds, no fine-tuning between), then fine-tune"),
    ("iterative", "prune and fine-tune in K rounds, then fine-tune"),
):
    command(_name, help=_help, configure=_pipeline_flags)(_run_pipeline)


def _percent(value: float | None) -> str:
    """``value`` (a fraction) in percent, with as many digits as it takes not to round to
    0 % or 100 % when it is neither (0.99999999 removed is not "100.00 %")."""
    if value is None:
        return "-"
    digits = 2
    while digits < 12 and 0 < value < 1 and f"{100 * value:.{digits}f}" in _rounded_ends(digits):
        digits += 1
    return f"{100 * value:.{digits}f} %"


def _rounded_ends(digits: int) -> tuple[str, str]:
    return f"{0:.{digits}f}", f"{100:.{digits}f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_summary(out: str, summary: dict[str, Any]) -> None:
    rows = [("run", out)]
    if summary.get("method") is not None:
        rows += [
            ("method", summary["method"]),
            ("sparsity", f"{_percent(summary['achieved_sparsity'])} removed"),
            ("dense test acc", _percent(summary.get("dense_test_acc"))),
            ("pruned test acc", _percent(summary.get("pruned_test_acc"))),
        ]
    rows += [
        ("final test acc", _percent(summary.get("final_test_acc"))),
        (f"last-{summary['last_k']} mean", _percent(summary.get("last_k_mean_test_acc"))),
        (
            "best-val test acc",
            _percent(summary.get("best_val_test_acc"))
            + (
                "" if summary["best_val_epoch"] is None else f" (epoch {summary['best_val_epoch']})"
            ),
        ),
        (
            "seconds",
            f"prune {summary['prune_seconds']:.1f}, fine-tune {summary['finetune_seconds']:.1f}"
            f", total {summary['seconds']:.1f}",
        ),
    ]
    if summary.get("task") == "language_model":  # accuracies above are per token
        rows += [
            (f"{label} test ppl", _number(summary.get(f"{key}_test_ppl")))
            for label, key in (
                ("dense", "dense"), ("pruned", "pruned"), ("final", "final"),
                (f"last-{summary['last_k']} mean", "last_k_mean"), ("best-val", "best_val"),
            )
            if summary.get(f"{key}_test_ppl") is not None
        ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def _resume_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="run directory written by a pipeline command")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "resume", help="continue an interrupted run from its last checkpoint", configure=_resume_flags
)
def _resume(args: argparse.Namespace) -> int:
    check_not_prune_run(args.directory, "it has no checkpoints to resume (rerun it)")
    saved = Path(args.directory) / "config.yaml"  # missing: pipelines.resume explains
    device = load_config(saved).run.device if saved.is_file() else "auto"
    return in_process_group(
        device,
        lambda: pipelines.resume(args.directory, quiet=args.quiet or None),
        out=args.directory,
    )
