"""The data set registry: ``register_dataset``, ``load_dataset``, ``list_datasets``.

The same pattern as the pruner and model registries (style.md §3): an explicit dict filled
by a decorator that refuses a taken name, a factory that raises :class:`UnknownNameError`
with the choices, and a sorted listing. Each entry also records what sfpk needs to know
before loading the data (the input shape, whether it is read from a data directory, the
task: classification or language model), so that this registry is the one place those
facts are written down. Families of data sets named ``<prefix>:<argument>`` (``text:<path>``)
register their loader with :func:`register_dataset_prefix`, as models do with ``tv:``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError, UnknownNameError
from ..losses import TASKS, Task
from .base import DataSplits

__all__ = [
    "DatasetSpec",
    "register_dataset",
    "register_dataset_prefix",
    "dataset_spec",
    "dataset_argument",
    "dataset_prefixes",
    "list_datasets",
    "embedded_datasets",
    "check_dataset_options",
    "load_dataset",
]

Loader = Callable[..., DataSplits]
L = TypeVar("L", bound=Loader)
# Keyword arguments every loader receives from load_dataset; the others are data options.
_STANDARD_ARGUMENTS = ("data_dir", "seed", "val_fraction", "augment")


@dataclass(frozen=True)
class DatasetSpec:
    """One registered data set, or one family of data sets named ``<prefix>:<argument>``.

    Attributes:
        name: registry key, lowercase (the prefix, for a prefix family).
        loader: ``loader(*, seed, val_fraction, augment[, data_dir], **options) ->
            DataSplits``; a prefix family's loader takes the argument (a path) first.
        input_shape: shape of one input sample, e.g. ``(40,)`` or ``(3, 32, 32)``; for a
            language-model data set, ``(block_size,)`` with the default block size.
        on_disk: read from ``data_dir`` / ``$SFPK_DATA`` (and then the loader takes
            ``data_dir``); False for data sets generated or shipped in memory, and for
            prefix families, which read the path in their name.
        task: ``"classification"`` or ``"language_model"`` (:mod:`sfpk.losses`).
        prefix: whether ``name`` is a prefix (``text`` in ``text:corpus.txt``).
    """

    name: str
    loader: Loader
    input_shape: tuple[int, ...]
    on_disk: bool
    task: Task = "classification"
    prefix: bool = False

    def options(self) -> list[str]:
        """The data options (``data.options`` keys) the loader accepts."""
        parameters = inspect.signature(self.loader).parameters.values()
        return [
            p.name
            for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _STANDARD_ARGUMENTS
        ]


_REGISTRY: dict[str, DatasetSpec] = {}
_PREFIXES: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str, *, input_shape: tuple[int, ...], on_disk: bool, task: Task = "classification"
) -> Callable[[L], L]:
    """Register the decorated loader as data set ``name``.

    Args:
        name: registry key; lowercase.
        input_shape: shape of one input sample.
        on_disk: whether the loader reads files from a data directory (it then takes
            ``data_dir``).
        task: ``"classification"`` or ``"language_model"``.

    Returns:
        A decorator that returns the loader unchanged.

    Raises:
        ConfigError: if the name is already registered.

    Example:
        >>> @register_dataset("toy", input_shape=(4,), on_disk=False)  # doctest: +SKIP
        ... def load_toy(*, seed=0, val_fraction=0.1, augment=True): ...
    """
    return _registrar(_REGISTRY, name, input_shape, on_disk=on_disk, task=task, prefix=False)


def register_dataset_prefix(
    prefix: str, *, input_shape: tuple[int, ...], task: Task = "classification"
) -> Callable[[L], L]:
    """Register the decorated loader for every data set named ``<prefix>:<argument>``.

    The loader is called as ``loader(argument, *, seed, val_fraction, augment, **options)``;
    the argument is a file-system path (:func:`sfpk.config.core.build_config` makes it absolute).

    Raises:
        ConfigError: if the prefix is already registered.

    Example:
        >>> @register_dataset_prefix("text", input_shape=(128,), task="language_model")
        ... def load_text(path, *, seed=0, val_fraction=0.1, augment=True): ...  # doctest: +SKIP
    """
    return _registrar(_PREFIXES, prefix, input_shape, on_disk=False, task=task, prefix=True)


def _registrar(
    registry: dict[str, DatasetSpec],
    name: str,
    input_shape: tuple[int, ...],
    *,
    on_disk: bool,
    task: Task,
    prefix: bool,
) -> Callable[[L], L]:
    key = name.lower()
    if task not in TASKS:
        raise ConfigError(f"task={task!r} must be one of {', '.join(TASKS)}")

    def decorate(loader: L) -> L:
        if key in registry:
            kind = "prefix" if prefix else "name"
            raise ConfigError(f"data set {kind} {key!r} is already registered")
        registry[key] = DatasetSpec(key, loader, tuple(input_shape), on_disk, task, prefix)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted (families: :func:`dataset_prefixes`)."""
    return sorted(_REGISTRY)


def dataset_prefixes() -> list[str]:
    """The prefixes of data set families (``text`` for ``text:<path>``), sorted."""
    return sorted(_PREFIXES)


def embedded_datasets() -> list[str]:
    """Names of the data sets that need no data directory, sorted."""
    return sorted(name for name, spec in _REGISTRY.items() if not spec.on_disk)


def _split_name(name: str) -> tuple[DatasetSpec, str | None]:
    text = str(name)
    prefix, sep, argument = text.partition(":")
    if sep and prefix.lower() in _PREFIXES:
        if not argument.strip():
            raise ConfigError(f"data set {text!r}: give a path after {prefix}:")
        return _PREFIXES[prefix.lower()], argument
    spec = _REGISTRY.get(text.lower())
    if spec is None:
        choices = list_datasets() + [f"{p}:<path>" for p in dataset_prefixes()]
        raise UnknownNameError("data set", name, choices)
    return spec, None


def dataset_spec(name: str) -> DatasetSpec:
    """The registered data set ``name`` (case-insensitive), or the family of ``<prefix>:...``.

    Raises:
        UnknownNameError: if the name is not registered (the message lists the choices).
        ConfigError: a prefix without an argument (``"text:"``).
    """
    return _split_name(name)[0]


def dataset_argument(name: str) -> str | None:
    """The argument of a ``<prefix>:<argument>`` name (its case kept), None for plain names."""
    return _split_name(name)[1]


def check_dataset_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError if the data set ``name`` does not accept every key of ``options``.

    Only the names are checked here; the loader checks the values when it loads.
    """
    spec = dataset_spec(name)
    accepted = spec.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"data set {spec.name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no options'}"
        )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
    **options: Any,
) -> DataSplits:
    """Load a data set by name as train / val / test splits.

    Args:
        name: One of :func:`list_datasets` (case-insensitive), or ``<prefix>:<path>`` with a
            prefix of :func:`dataset_prefixes` (``text:corpus.txt``, :mod:`sfpk.data.text`).
        data_dir: Folder of on-disk data sets (the parent of e.g. ``cifar-100-python/``,
            or that folder itself); default ``$SFPK_DATA``. Ignored by the data sets of
            :func:`embedded_datasets` and the prefix families.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the official training split held out as ``val``, in [0, 1)
            (classification data sets; text data sets split by their ``splits`` option).
        augment: Apply training augmentation to ``train`` (image data sets only).
        **options: Data-set specific options (``data.options``), e.g. ``block_size`` and
            ``tokenizer`` for text; :meth:`DatasetSpec.options` lists them.

    Returns:
        The splits with ``num_classes``, ``input_shape`` and ``task``.

    Raises:
        UnknownNameError: If ``name`` is not a known data set.
        DataError: If an on-disk data set is missing or malformed.
        ConfigError: If ``val_fraction`` is outside [0, 1) or an option is unknown or bad.

    Example:
        >>> splits = load_dataset("mnist1d", seed=0)
        >>> splits.input_shape, splits.num_classes
        ((40,), 10)
    """
    spec, argument = _split_name(name)
    check_dataset_options(name, options)
    standard: dict[str, Any] = dict(seed=seed, val_fraction=val_fraction, augment=augment)
    if spec.on_disk:
        standard["data_dir"] = data_dir
    if spec.prefix:
        return spec.loader(argument, **standard, **options)
    return spec.loader(**standard, **options)
