"""The ``sfpk prune`` subcommand: prune a pretrained language model layer-wise, no training.

Its flags are its own (:class:`sfpk.pipelines.llm_prune.LMPruneSettings`), not the pipeline
config's: it has no training phases, and its calibration windows replace the pipelines'
pruning batches. Names shared with the pipeline commands mean the same (``--model``, ``--data``,
``--method``, ``--sparsity``, ``--structure``, ``--out``, ``--seed``, ``--data-option``,
``--model-option``, ``--option``, ``--device``, ``--quiet``, ``--overwrite``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config.layers import yaml_value
from ..errors import ConfigError
from ..pipelines.llm_prune import LM_METHODS, LMPruneSettings, prune_lm
from .commands import command

__all__: list[str] = []


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML, as the pipeline commands' option flags."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} must look like KEY=VALUE")
    try:
        return key.strip(), yaml_value(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prune_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", required=True, metavar="hf:DIR", help="causal LM, hf:<folder or Hub id>")
    add("--data", required=True, metavar="text:FILE", help="text:<file or folder> or tinytext")
    add(
        "--method",
        default="sparsegpt",
        metavar="{" + ",".join(LM_METHODS) + "}",
        help="layer-wise pruning method (default sparsegpt)",
    )
    add(
        "--sparsity",
        type=float,
        default=None,
        help="fraction of prunable weights REMOVED, in (0, 1) (N:M: 1 - N/M, the default)",
    )
    add(
        "--structure",
        default=None,
        metavar="{unstructured,N:M}",
        help="unstructured (default) or N:M, e.g. 2:4 (2 of every 4 input weights kept)",
    )
    add("--out", required=True, metavar="RUN", help="run directory")
    add(
        "--calibration-samples",
        type=int,
        default=128,
        metavar="N",
        help="calibration windows drawn from the train split (default 128)",
    )
    add(
        "--calibration-seqlen",
        type=int,
        default=None,
        metavar="L",
        help="tokens per calibration / test window (default: the model's context, <= 2048)",
    )
    add("--seed", type=int, default=0, help="seed of the calibration draw and the method")
    add("--eval-batch-size", type=int, default=8, metavar="B", help="windows per ppl batch")
    for flag, dest, what in (
        ("--data-option", "data_options", "data set option (tokenizer, splits)"),
        ("--model-option", "model_options", "hf: loader option (attn_implementation)"),
        ("--option", "method_options", "method option"),
    ):
        add(
            flag,
            dest=dest,
            type=_option,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"{what} (repeatable)",
        )
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    add("--quiet", action="store_true", help="no progress bars")
    add("--overwrite", action="store_true", help="replace an existing run directory")


def _settings(args: argparse.Namespace) -> LMPruneSettings:
    values: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "model", "data", "method", "sparsity", "structure", "out", "calibration_samples",
            "calibration_seqlen", "seed", "eval_batch_size", "device", "quiet", "overwrite",
        )
    }  # fmt: skip
    for name in ("data_options", "model_options", "method_options"):
        values[name] = dict(getattr(args, name))
    return LMPruneSettings(**values)


@command(
    "prune",
    help="prune a pretrained language model layer-wise (calibrate, prune, perplexity; no training)",
    configure=_prune_flags,
)
def _prune(args: argparse.Namespace) -> int:
    summary = prune_lm(_settings(args))
    rows = [
        ("run", args.out),
        ("method", f"{summary['method']} ({summary['structure']})"),
        ("sparsity", f"{100 * summary['sparsity']:.2f} % removed"),
        ("dense ppl", f"{summary['dense_ppl']:.3f}"),
        ("pruned ppl", f"{summary['pruned_ppl']:.3f}"),
        ("windows", f"{summary['calibration_samples']} calibration, "
                    f"{summary['eval_windows']} test, {summary['calibration_seqlen']} tokens"),
        ("seconds", f"prune {summary['prune_seconds']:.1f}, total {summary['seconds']:.1f}"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    return 0
