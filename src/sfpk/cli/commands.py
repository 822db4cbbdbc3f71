"""The ``sfpk`` subcommands and their registry: :data:`COMMANDS`, filled by :func:`command`.

Adding a subcommand is a decorated function::

    @command("reference", help="...", configure=add_reference_flags)
    def _reference(args: argparse.Namespace) -> int: ...

The subcommands follow the registry, in the order of the help listing; :mod:`sfpk.cli`
builds the parser from the registry and runs a command line.

**The pipeline subcommands** (pretrain, oneshot, iterative, resume) and how a run executes
under the command: process group, SIGTERM, the summary printed at the end.

Pipeline flags are generated from the config dataclasses (:mod:`sfpk.cli.flags`), one per
knob, with ``default=SUPPRESS`` so that only flags the user typed override the YAML recipe.

Launched by ``torchrun`` (``torchrun --nproc_per_node W -m sfpk oneshot ...``), the pipeline
commands join the process group the launcher describes: every rank runs the pipeline, SFPK /
SpODE split their particle passes over the ranks, and only rank 0 logs below WARNING, shows
progress bars, writes the run directory and prints the summary. SIGTERM stops a run as
Ctrl-C does (:class:`Terminated`): marked interrupted, resumable.

**The other subcommands**: the registry listings (methods, models, datasets), ``reference`` (a
reference command line, translated by :mod:`sfpk.cli.reference` and run through
:func:`in_process_group`), ``report`` over finished runs and ``export`` of one run's pruned
model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import pipelines
from ..config.core import build_config, demo_preset, load_config
from ..data import dataset_prefixes, list_datasets
from ..deploy.export import ExportOptions
from ..errors import ConfigError
from ..models import list_models
from ..pipelines.hf_run import export_hf_run
from ..pipelines.llm_prune import check_not_prune_run
from ..pipelines.report import write_report
from ..pipelines.run import export_run, read_status
from ..pruners import methods, pruner_class
from ..training import distributed
from .flags import (
    add_config_flags,
    check_flags_apply,
    check_pretrain_flags_apply,
    overrides_from_args,
)
from .reference import native_command, translate

__all__ = [
    "COMMANDS",
    "Command",
    "command",
    "Terminated",
    "in_process_group",
    "sigterm_interrupts",
    "PASSTHROUGH_OWN_FLAGS",
]


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


@command("methods", help="list the pruning methods and their options")
def _methods(args: argparse.Namespace) -> int:
    for name in methods():
        cls = pruner_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {summary}")
        for field in dataclasses.fields(cls.Options):
            factory = field.default_factory
            default = factory() if callable(factory) else field.default
            print(f"    {field.name} = {default!r}")
    return 0


@command("models", help="list the registered models")
def _models(args: argparse.Namespace) -> int:
    print("\n".join(list_models()))
    return 0


@command("datasets", help="list the data sets")
def _datasets(args: argparse.Namespace) -> int:
    print("\n".join([*list_datasets(), *(f"{p}:<file or folder>" for p in dataset_prefixes())]))
    return 0


# The reference command's own flags; :func:`sfpk.cli.main` passes every other one through.
PASSTHROUGH_OWN_FLAGS = ("--dry-run",)


def _reference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reference_args",
        nargs=argparse.REMAINDER,
        metavar="FLAG",
        help="the reference main.py flags (its --sparsity is the fraction KEPT)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the native command and stop")


@command(
    "reference",
    help="run a command line of the reference implementation (python main.py -> sfpk reference)",
    configure=_reference_flags,
    passthrough=True,
)
def _reference(args: argparse.Namespace) -> int:
    translation = translate(args.extra)
    for note in translation.notes:
        print(f"sfpk reference: note: {note}", file=sys.stderr)
    print("equivalent native command:\n  " + shlex.join(native_command(translation)))
    # Validated in a dry run too (files need not exist yet), so it never shows a command
    # that would then be refused.
    config = build_config(
        translation.pipeline, overrides=translation.overrides, check_paths=not args.dry_run
    )
    if args.dry_run:
        return 0
    if config.run.out is None:
        raise ConfigError("sfpk reference: give a run directory with --out_dir")
    return in_process_group(
        config.run.device, lambda: pipelines.start(config), out=str(config.run.out)
    )


def _report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    parser.add_argument("-o", "--out", required=True, help="folder for report.md and figures")


@command(
    "report",
    help="compare runs: Markdown table (mean +- std over seeds) and accuracy-vs-sparsity plot",
    configure=_report_flags,
)
def _report(args: argparse.Namespace) -> int:
    path = write_report(args.runs, args.out)
    print(path.read_text(), end="")
    print(f"wrote {path} and {path.parent / 'accuracy_vs_sparsity.png'}")
    return 0


def _export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="finished run directory")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for model.safetensors and masks"
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="store pruned tensors compressed (kept values + bitmask or int32 indices)",
    )
    parser.add_argument(
        "--slim",
        action="store_true",
        help="remove pruned filters/channels (filter or channel masks; needs sfpk[slim])",
    )
    parser.add_argument(
        "--format",
        choices=["safetensors", "onnx", "hf"],
        default="safetensors",
        help="model file format (onnx needs sfpk[onnx] and is checked in onnxruntime; hf: a "
        "save_pretrained folder of an hf: model, pruned neurons/heads removed where possible)",
    )
    parser.add_argument(
        "--semi-structured",
        action="store_true",
        help="2:4 masks: convert linear layers with torch's semi-structured sparsity (CUDA GPU)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="number of classes, when the run's data set cannot be read here",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export")


@command(
    "export",
    help="write a run's pruned model as a self-describing state dict (sfpk.load_model reads it)",
    configure=_export_flags,
)
def _export(args: argparse.Namespace) -> int:
    if args.format == "hf":  # a save_pretrained folder of an hf: run (sfpk.deploy.hf_export)
        return _export_hf(args)
    check_not_prune_run(args.run_dir, "export it with --format hf")
    options = ExportOptions(
        sparse=args.sparse,
        slim=args.slim,
        format=args.format,
        semi_structured=args.semi_structured,
        overwrite=args.overwrite,
    )
    path = export_run(args.run_dir, args.out, options=options, num_classes=args.num_classes)
    for file in sorted([*path.parent.glob("*.safetensors"), *path.parent.glob("*.onnx")]):
        print(f"wrote {file} ({file.stat().st_size:,} bytes)")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    if args.sparse or args.semi_structured:
        flag = "--sparse" if args.sparse else "--semi-structured"
        raise ConfigError(
            f"{flag} does not apply to --format hf (transformers reads dense weights)"
        )
    result = export_hf_run(
        args.run_dir, args.out, num_classes=args.num_classes, overwrite=args.overwrite
    )
    for file in sorted(p for p in result.folder.iterdir() if p.is_file()):
        print(f"wrote {file} ({file.stat().st_size:,} bytes)")
    return 0  # a note on what was not slimmed is logged (and in sfpk_export.json)
