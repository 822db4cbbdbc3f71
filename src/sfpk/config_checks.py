"""Checks of config values against the world: the registries, the device and the disk.

A config section checks its own values when it is built (:mod:`sfpk.config`); what it
cannot know alone is whether a name is registered, whether the device exists here and
whether input files are where the config says. Those checks live here, take plain values,
and never import :mod:`sfpk.config` (which imports this module). Every check names the
key, the bad value and, for names, the choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .data import check_dataset_options
from .errors import ConfigError
from .models import is_external, model_builder
from .pruners import create_pruner
from .train import select_device

__all__ = [
    "check_dataset",
    "check_model",
    "check_method",
    "check_device",
    "check_input_paths",
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
