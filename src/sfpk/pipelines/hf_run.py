"""The Hugging Face export of a finished run directory (``sfpk export RUN --format hf``).

:func:`sfpk.deploy.hf_export.export_hf` writes a model; this module finds a run's model
first: a pipeline run's architecture comes from its resolved config
(:func:`sfpk.pipelines.run.run_architecture`), an ``sfpk prune`` run's from the small config
that command writes. The config is read here, a layer above ``deploy``, which never reads
run configurations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .. import models
from ..config.core import load_config
from ..deploy.export import MASKS_FILE, MODEL_FILE, Architecture
from ..deploy.hf_export import HFExport, check_hf_folder, formats_for, write_hf_folder
from ..errors import CheckpointError, ConfigError
from ..masks.core import load_masks
from .run import check_finished_run, run_architecture

__all__ = ["check_hf_run", "export_hf_run", "run_model_name"]


def run_model_name(run: Path) -> tuple[str, dict[str, Any]]:
    """The model name of a run directory, from its ``config.yaml``, and the parsed YAML."""
    try:
        data = yaml.safe_load((run / "config.yaml").read_text()) or {}
        name = data["model"]["name"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(run / 'config.yaml')!r} names no model ({exc})") from None
    return str(name), data


def check_hf_run(run_dir: str | os.PathLike) -> str:
    """The ``hf:`` model name of a run, or a ConfigError naming its model and formats."""
    run = Path(run_dir)
    check_finished_run(run)
    name, _ = run_model_name(run)
    if "hf" not in formats_for(name):
        raise ConfigError(
            f"format 'hf' writes Hugging Face checkpoints of hf: models; the run's model is "
            f"{name!r}: export it with --format {' or --format '.join(formats_for(name))}"
        )
    return name


def _run_architecture(run: Path, data: dict[str, Any], num_classes: int | None) -> Architecture:
    if data.get("command") == "prune":  # sfpk prune writes its own small config
        model = data["model"]
        return Architecture(
            name=model["name"],
            num_classes=int(num_classes or model["num_classes"]),
            input_shape=None,
            options=dict(model.get("options") or {}),
        )
    return run_architecture(
        load_config(run / "config.yaml", check_paths=False), num_classes=num_classes
    )


def export_hf_run(
    run_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    slim: bool = True,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> HFExport:
    """:func:`export_hf` for a finished run directory of an ``hf:`` model.

    The model is rebuilt from the run's ``hf:`` folder (it must still exist: the config and
    tokenizer come from it) and filled with the run's ``model.safetensors``; the run's
    ``masks.safetensors`` are baked in.

    Raises:
        CheckpointError: not a finished run directory.
        ConfigError: the run's model is not an ``hf:`` model (the message names it and the
            formats it can be exported in).
    """
    run = Path(run_dir)
    check_hf_run(run)
    name, data = run_model_name(run)
    check_hf_folder(Path(folder), overwrite=overwrite)
    architecture = _run_architecture(run, data, num_classes)
    model = models.load_weights(architecture.build(), run / MODEL_FILE)
    masks = load_masks(run / MASKS_FILE, model) if (run / MASKS_FILE).is_file() else None
    source = name.split(":", 1)[1]
    tokenizer = ((data.get("data") or {}).get("options") or {}).get("tokenizer")
    if not Path(source).expanduser().is_dir() and isinstance(tokenizer, str):
        source = tokenizer  # a Hub id's files are in the cache; the run's data read these
    return write_hf_folder(
        model, Path(folder), masks, source, slim=slim, overwrite=overwrite,
        extra_info={"run": str(run.resolve())},
    )  # fmt: skip
