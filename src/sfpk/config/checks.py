"""Checks of config values against the world: the registries, the device and the disk.

A config section checks its own values when it is built (:mod:`sfpk.config.core`); what it
cannot know alone is whether a name is registered, whether the device exists here and
whether input files are where the config says. Those checks live here, take plain values,
and never import :mod:`sfpk.config.core` (which imports this module). Every check names the
key, the bad value and, for names, the choices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data import check_dataset_options, dataset_argument, dataset_spec
from ..errors import ConfigError
from ..models import is_external, model_builder
from ..pruners import create_pruner
from ..training.trainer import select_device

__all__ = [
    "check_dataset",
    "check_model",
    "check_method",
    "check_device",
    "check_input_paths",
    "resolve_data_paths",
]


def check_dataset(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raise UnknownNameError unless ``name`` is a registered data set (or ``text:<path>``),
    ConfigError if it does not accept every key of ``options`` (``data.options``)."""
    check_dataset_options(name, options or {})


def check_model(name: str) -> None:
    """Raise UnknownNameError unless ``name`` is a registered model or an external name.

    External names (``tv:resnet18``) are only checked for their prefix: looking the model
    up would import the optional library.
    """
    if not is_external(name):
        model_builder(name)


def check_method(method: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``method`` is registered and accepts ``options``."""
    create_pruner(method, **options)


def check_device(name: str) -> None:
    """Raise ConfigError unless ``name`` is a torch device available here."""
    select_device(name)


def check_input_paths(
    *, checkpoint: str | None, data_dir: str | None, data_path: str | None = None
) -> None:
    """Raise ConfigError if the dense weights file, the data directory or the text file or
    folder of ``text:<data_path>`` is missing."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"model.checkpoint={checkpoint!r} does not exist")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data.data_dir={data_dir!r} is not a directory")
    if data_path is not None and not Path(data_path).exists():
        raise ConfigError(f"data.dataset: {data_path!r} does not exist (text file or folder)")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def resolve_data_paths(config: Any) -> None:
    """Freeze the data paths of ``config`` (a Config) and default a language model's tokenizer.

    A resume in another working directory or environment must read the data the run
    started with: ``text:<path>``, a tokenizer path and ``$SFPK_DATA`` (on-disk data sets)
    become absolute. A language-model data set without a ``tokenizer`` option uses the
    model's own for ``hf:<folder or id>`` models (else the data set's default, bytes).
    """
    data = config.data
    spec = dataset_spec(data.dataset)
    argument = dataset_argument(data.dataset)
    if argument is not None:
        data.dataset = f"{spec.name}:{_absolute(argument)}"
    data_dir = data.data_dir or os.environ.get("SFPK_DATA") or None
    if data_dir is not None and spec.on_disk:
        data.data_dir = _absolute(data_dir)
    # YAML has no tuples; config.yaml must read back as it was written.
    data.options = {k: list(v) if isinstance(v, tuple) else v for k, v in data.options.items()}
    if spec.task != "language_model" or "tokenizer" not in spec.options():
        return
    tokenizer = data.options.get("tokenizer")
    model = config.model.name
    if tokenizer is None and model.lower().startswith("hf:"):
        tokenizer = model.split(":", 1)[1]
    if isinstance(tokenizer, str) and os.path.exists(os.path.expanduser(tokenizer)):
        tokenizer = _absolute(tokenizer)
    if tokenizer is not None:
        data.options["tokenizer"] = tokenizer
