"""The ``sfpk`` subcommands besides the pipelines: the registry listings (methods, models,
datasets), ``reference`` (a reference command line, translated and run through
:func:`sfpk.cli_pipelines.in_process_group`), ``report`` over finished runs and ``export`` of
one run's pruned model."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from . import pipelines
from .cli_commands import command
from .cli_pipelines import in_process_group
from .config import build_config
from .data import dataset_prefixes, list_datasets
from .errors import ConfigError
from .export import export_run
from .hf_export import export_hf_run
from .lm_prune import check_not_prune_run
from .models import list_models
from .pruners import methods, pruner_class
from .reference import native_command, translate
from .report import write_report

__all__ = ["PASSTHROUGH_OWN_FLAGS"]


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
    if args.format == "hf":  # a save_pretrained folder of an hf: run (sfpk.hf_export)
        return _export_hf(args)
    check_not_prune_run(args.run_dir, "export it with --format hf")
    path = export_run(
        args.run_dir,
        args.out,
        sparse=args.sparse,
        slim=args.slim,
        format=args.format,
        semi_structured=args.semi_structured,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
    )
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
