"""Prune a pretrained language model without training: ``sfpk prune`` / :func:`prune_lm`.

``sfpk prune --model hf:DIR --data text:FILE --method sparsegpt --sparsity 0.5 --structure
2:4 --out RUN`` calibrates, prunes layer-wise and evaluates, with no pretraining and no
fine-tuning (the Wanda / SparseGPT protocol):

1. the text is tokenized with the model's tokenizer and split as every ``text:`` data set
   is (:mod:`sfpk.data.text`, ``docs/data.md``; blocks of ``seqlen + 1`` tokens, train /
   val / test spans);
2. ``calibration_samples`` random windows of ``seqlen`` tokens are drawn from the **train**
   span (``seed``), :func:`sfpk.llm.sample_calibration`;
3. perplexity of the dense model on the **test** span (its tokens cut into non-overlapping
   windows of ``seqlen``, :func:`sfpk.llm.perplexity`);
4. :func:`sfpk.llm.prune_layerwise` prunes block by block (a progress bar per block);
5. perplexity of the pruned model on the same windows;
6. the run folder: ``config.yaml`` (these settings, ``command: prune``), ``summary.json``
   (``dense_ppl``, ``pruned_ppl``, ``sparsity``, ``seconds``, ...), ``masks.safetensors`` and
   ``model.safetensors`` (pruned weights exact zeros; SparseGPT also updates the kept ones).
   ``sfpk export RUN --out DIR --format hf`` then writes a Hugging Face checkpoint.

Every setting is checked before any work (:meth:`LMPruneSettings.check`), so a bad value
is a one-line error (exit status 2). The layer-wise pruning and perplexity themselves are
:mod:`sfpk.llm`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from .. import data, models
from ..data import dataset_argument, dataset_spec
from ..deploy.export import MASKS_FILE, MODEL_FILE
from ..errors import ConfigError, check_choice
from ..masks.prunable import parse_nm
from ..prune_args import SEED_MAX
from ..training.checkpoint import save_state_dict
from ..training.trainer import select_device

__all__ = ["LM_METHODS", "LMPruneSettings", "check_not_prune_run", "prune_lm", "SUMMARY_KEYS"]

log = logging.getLogger(__name__)

# The layer-wise methods of sfpk.llm.prune_layerwise (LLM_CONTRACT.md).
LM_METHODS: tuple[str, ...] = ("mag", "wanda", "sparsegpt", "spode", "sfpk")
SUMMARY_KEYS: tuple[str, ...] = (
    "command", "model", "data", "method", "structure", "target_sparsity", "sparsity",
    "dense_ppl", "pruned_ppl", "calibration_samples", "calibration_seqlen", "eval_windows",
    "eval_tokens", "seed", "prune_seconds", "block_seconds", "peak_rss_mb", "seconds",
)  # fmt: skip
DEFAULT_SEQLEN_CAP = 2048  # the Wanda / SparseGPT context (capped by the model's positions)


@dataclass(frozen=True)
class LMPruneSettings:
    """The settings of one ``sfpk prune`` run (``config.yaml`` of the run folder).

    Attributes:
        model: ``hf:<folder or Hub id>`` of a causal language model.
        data: a language-model data set: ``text:<file or folder>`` or ``tinytext``.
        out: the run folder.
        method: one of :data:`LM_METHODS`.
        sparsity: fraction of the prunable weights REMOVED, in (0, 1); with an N:M
            structure, None means ``1 - N/M`` (any other value is an error).
        structure: None or ``"unstructured"``, or ``"N:M"`` (``"2:4"``: 2 of every 4
            consecutive input weights kept).
        calibration_samples: calibration windows drawn from the train split.
        calibration_seqlen: tokens per calibration and evaluation window; None: the model's
            context, at most 2048.
        seed: seed of the calibration draw and of the method.
        data_options: options of the data set (``tokenizer``, ``splits``; the block size is
            the seqlen); the tokenizer defaults to the model's.
        method_options: options of the layer-wise method.
        model_options: options of the ``hf:`` loader (e.g. ``attn_implementation``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        eval_batch_size: windows per perplexity batch.
        quiet: no progress bars.
        overwrite: replace an existing run folder.
    """

    model: str
    data: str
    out: str
    method: str = "sparsegpt"
    sparsity: float | None = None
    structure: str | None = None
    calibration_samples: int = 128
    calibration_seqlen: int | None = None
    seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    eval_batch_size: int = 8
    quiet: bool = False
    overwrite: bool = False

    def check(self) -> LMPruneSettings:
        """These settings with the defaults resolved, or the first bad value's ConfigError.

        Checks names, ranges and paths only: nothing is loaded.
        """
        if not isinstance(self.model, str) or not self.model.lower().startswith("hf:"):
            raise ConfigError(
                f"--model {self.model!r}: sfpk prune takes a Hugging Face causal language "
                "model, hf:<folder or Hub id> (e.g. hf:models/llama-tiny)"
            )
        spec = dataset_spec(self.data)  # UnknownNameError names the data sets
        if spec.task != "language_model":
            raise ConfigError(
                f"--data {self.data!r} is a {spec.task} data set; sfpk prune needs text: "
                "text:<file or folder> or tinytext"
            )
        argument = dataset_argument(self.data)
        if argument is not None and not Path(argument).expanduser().exists():
            raise ConfigError(f"--data {self.data!r}: {argument!r} does not exist")
        if "block_size" in self.data_options:
            raise ConfigError(
                "--data-option block_size does not apply to sfpk prune: the windows are "
                "--calibration-seqlen tokens long"
            )
        data.check_dataset_options(self.data, self.data_options)
        check_choice("method", self.method, LM_METHODS)
        structure = None if self.structure in (None, "unstructured") else self.structure
        nm = parse_nm(structure) if structure is not None else None
        if structure is not None and nm is None:
            raise ConfigError(
                f"--structure {self.structure!r}: sfpk prune takes unstructured or N:M "
                "(e.g. 2:4, 4:8)"
            )
        sparsity = self.sparsity
        if sparsity is None:
            if nm is None:
                raise ConfigError("--sparsity is required (the fraction removed, e.g. 0.5)")
            sparsity = 1.0 - nm[0] / nm[1]
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise ConfigError(f"--sparsity {sparsity!r} must be a number in (0, 1)")
        if not (math.isfinite(sparsity) and 0 < sparsity < 1):
            raise ConfigError(f"--sparsity {sparsity!r} must be in (0, 1): the fraction removed")
        if nm is not None and abs(sparsity - (1.0 - nm[0] / nm[1])) > 1e-9:
            raise ConfigError(
                f"--structure {structure} removes {1.0 - nm[0] / nm[1]:g} of the weights; "
                f"--sparsity {sparsity!r} differs (pass --sparsity {1.0 - nm[0] / nm[1]:g} "
                "or leave it out)"
            )
        for name, value, low in (
            ("--calibration-samples", self.calibration_samples, 1),
            ("--calibration-seqlen", self.calibration_seqlen, 2),
            ("--eval-batch-size", self.eval_batch_size, 1),
            ("--seed", self.seed, 0),
        ):
            if value is None and name == "--calibration-seqlen":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} {value!r} must be an integer >= {low}")
        if self.seed > SEED_MAX:
            raise ConfigError(f"--seed {self.seed} must be at most {SEED_MAX}")
        select_device(self.device)
        _check_out(Path(self.out), overwrite=self.overwrite)
        return _replace(self, sparsity=float(sparsity), structure=structure)


def check_not_prune_run(run_dir: str | os.PathLike, what: str) -> None:
    """Raise ConfigError if ``run_dir`` was written by ``sfpk prune`` (``what`` cannot read it:
    its ``config.yaml`` is that command's own, not a pipeline config)."""
    path = Path(run_dir) / "config.yaml"
    try:
        record = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return  # the command's own reading reports it
    if isinstance(record, dict) and record.get("command") == "prune":
        raise ConfigError(f"{str(run_dir)!r} was written by `sfpk prune`; {what}")


def _replace(settings: LMPruneSettings, **changes: Any) -> LMPruneSettings:
    values = asdict(settings)
    values.update(changes)
    return LMPruneSettings(**values)


def _check_out(directory: Path, *, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--out {str(directory)!r} is a file, not a folder")
    if not directory.exists() or not any(directory.iterdir()):
        return
    if not (directory / "config.yaml").is_file():
        raise ConfigError(f"--out {str(directory)!r} is a non-empty non-run folder")
    if not overwrite:
        raise ConfigError(
            f"run directory {str(directory)!r} already exists; pass --overwrite to replace it"
        )


def _llm() -> Any:
    """:mod:`sfpk.llm` (branch ``llm``: prune_layerwise, perplexity, calibration)."""
    try:
        from .. import llm
    except ImportError as exc:  # not merged yet
        raise ConfigError(f"sfpk prune needs sfpk.llm, which cannot be imported ({exc})") from exc
    return llm


def _model_positions(name: str) -> int | None:
    """The context length in the ``hf:`` model's config (read alone, without the weights)."""
    from ..models.hf import _import_transformers, _read_config

    config = _read_config(_import_transformers(), name.split(":", 1)[1], download=False)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _absolute_model(name: str) -> str:
    """``hf:<folder>`` with the folder made absolute (a Hub id stays as it is)."""
    prefix, _, rest = name.partition(":")
    path = Path(rest).expanduser()
    return f"{prefix}:{path.resolve()}" if path.is_dir() else name


def _data_options(settings: LMPruneSettings, seqlen: int) -> dict[str, Any]:
    options = dict(settings.data_options)
    if "tokenizer" not in options:
        options["tokenizer"] = settings.model.split(":", 1)[1]
    return {**options, "block_size": seqlen}


def _config_record(settings: LMPruneSettings, seqlen: int, num_classes: int) -> dict[str, Any]:
    """``config.yaml`` of the run: what ran, enough to rebuild the model (sfpk export)."""
    options = _data_options(settings, seqlen)
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    argument = dataset_argument(settings.data)
    dataset = settings.data
    if argument is not None:
        dataset = f"{dataset_spec(settings.data).name}:{Path(argument).expanduser().resolve()}"
    return {
        "command": "prune",
        "model": {
            "name": settings.model,
            "num_classes": num_classes,
            "options": dict(settings.model_options),
        },
        "data": {"dataset": dataset, "options": options},
        "prune": {
            "method": settings.method,
            "sparsity": settings.sparsity,
            "structure": settings.structure,
            "options": dict(settings.method_options),
        },
        "calibration": {"samples": settings.calibration_samples, "seqlen": seqlen},
        "run": {"seed": settings.seed, "device": settings.device, "out": settings.out},
    }


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _tokens(span: Any) -> Tensor:
    return span.tokens.to(torch.int64)


def prune_lm(settings: LMPruneSettings) -> dict[str, Any]:
    """Run ``sfpk prune``: calibrate, prune layer-wise, evaluate, write the run folder.

    Args:
        settings: the run's settings (checked first, before any work).

    Returns:
        The summary (also in ``summary.json``): :data:`SUMMARY_KEYS`.

    Raises:
        ConfigError: a bad setting (before any work); a seqlen above the model's positions,
            or more calibration windows than the train split holds (before pruning).
        DataError: the text cannot be read or is too short for one window per split.
    """
    started = time.perf_counter()
    settings = _replace(settings.check(), model=_absolute_model(settings.model))
    # Reading the config (not the weights) also checks that the folder or cached id is there.
    positions = _model_positions(settings.model)
    seqlen = settings.calibration_seqlen or min(DEFAULT_SEQLEN_CAP, positions or 2048)
    if positions is not None and seqlen > positions:
        raise ConfigError(
            f"--calibration-seqlen {seqlen} is longer than the {positions} positions of "
            f"{settings.model}; choose at most {positions}"
        )
    llm = _llm()
    llm.methods.method_options(settings.method, settings.method_options)  # before any work
    device = select_device(settings.device)
    splits = data.load_dataset(settings.data, **_data_options(settings, seqlen))
    # The data's vocabulary (the tokenizer's) must fit the model's; the hf: loader checks.
    model = models.create(settings.model, num_classes=splits.num_classes, **settings.model_options)
    llm.check_seqlen(model, seqlen)
    model = model.to(device).eval()
    calibration = llm.sample_calibration(
        _tokens(splits.train),
        num_samples=settings.calibration_samples,
        seqlen=seqlen,
        seed=settings.seed,
    )
    test = _tokens(splits.test)
    windows = len(test) // seqlen
    log.info(
        "sfpk prune: %s on %s, %d calibration windows of %d tokens, %d test windows",
        settings.method, settings.model, len(calibration), seqlen, windows,
    )  # fmt: skip
    dense_ppl = llm.perplexity(model, test, seqlen=seqlen, batch_size=settings.eval_batch_size)
    log.info("sfpk prune: dense perplexity %.3f", dense_ppl)
    result = llm.prune_layerwise(
        model,
        calibration.to(device),
        method=settings.method,
        sparsity=settings.sparsity,
        structure=settings.structure,
        options=settings.method_options or None,
        seed=settings.seed,
        progress=not settings.quiet,
    )
    pruned_ppl = llm.perplexity(model, test, seqlen=seqlen, batch_size=settings.eval_batch_size)
    log.info("sfpk prune: pruned perplexity %.3f", pruned_ppl)
    summary = {
        "command": "prune",
        "model": settings.model,
        "data": settings.data,
        "method": settings.method,
        "structure": settings.structure or "unstructured",
        "target_sparsity": settings.sparsity,
        "sparsity": result.masks.sparsity(),
        "dense_ppl": float(dense_ppl),
        "pruned_ppl": float(pruned_ppl),
        "calibration_samples": len(calibration),
        "calibration_seqlen": seqlen,
        "eval_windows": windows,
        "eval_tokens": windows * seqlen,
        "seed": settings.seed,
        "prune_seconds": float(result.seconds),
        "block_seconds": [float(s) for s in result.block_seconds],
        "peak_rss_mb": float(result.peak_rss_mb),
    }
    _write_run(settings, model, result.masks, seqlen, splits.num_classes, summary, started)
    return summary


@torch.no_grad()
def _zero_pruned_(model: nn.Module, masks: Any) -> None:
    """Make every pruned weight an exact ``+0.0`` in place (no copy of the model)."""
    params = dict(model.named_parameters())
    for name, mask in masks.effective_masks().items():
        weight = params[name]
        keep = mask.to(weight.device) != 0
        weight.copy_(torch.where(keep, weight, torch.zeros((), dtype=weight.dtype)))


def _write_run(
    settings: LMPruneSettings,
    model: nn.Module,
    masks: Any,
    seqlen: int,
    num_classes: int,
    summary: dict[str, Any],
    started: float,
) -> None:
    out = Path(settings.out)
    if out.exists() and any(out.iterdir()):  # checked before the work: --overwrite given
        log.info("replacing the run directory %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    record = _config_record(settings, seqlen, num_classes)
    (out / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    _zero_pruned_(model, masks)
    save_state_dict(model, out / MODEL_FILE)
    masks.save(out / MASKS_FILE)
    summary["seconds"] = time.perf_counter() - started
    _write_json(out / "summary.json", summary)
