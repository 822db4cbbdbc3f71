"""The data set registry: ``register_dataset``, ``load_dataset``, ``list_datasets``.

The same pattern as the pruner and model registries (style.md §3): an explicit dict filled
by a decorator that refuses a taken name, a factory that raises :class:`UnknownNameError`
with the choices, and a sorted listing. Each entry also records what sfpk needs to know
before loading the data (the input shape, whether it is read from a data directory), so
that this registry is the one place those facts are written down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ConfigError, UnknownNameError
from .base import DataSplits

__all__ = [
    "DatasetSpec",
    "register_dataset",
    "dataset_spec",
    "list_datasets",
    "embedded_datasets",
    "load_dataset",
]

Loader = Callable[..., DataSplits]
L = TypeVar("L", bound=Loader)


@dataclass(frozen=True)
class DatasetSpec:
    """One registered data set.

    Attributes:
        name: registry key, lowercase.
        loader: ``loader(*, seed, val_fraction, augment[, data_dir]) -> DataSplits``.
        input_shape: shape of one input sample, e.g. ``(40,)`` or ``(3, 32, 32)``.
        on_disk: read from ``data_dir`` / ``$SFPK_DATA`` (and then the loader takes
            ``data_dir``); False for data sets generated or shipped in memory.
    """

    name: str
    loader: Loader
    input_shape: tuple[int, ...]
    on_disk: bool


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(name: str, *, input_shape: tuple[int, ...], on_disk: bool) -> Callable[[L], L]:
    """Register the decorated loader as data set ``name``.

    Args:
        name: registry key; lowercase.
        input_shape: shape of one input sample.
        on_disk: whether the loader reads files from a data directory (it then takes
            ``data_dir``).

    Returns:
        A decorator that returns the loader unchanged.

    Raises:
        ConfigError: if the name is already registered.

    Example:
        >>> @register_dataset("toy", input_shape=(4,), on_disk=False)  # doctest: +SKIP
        ... def load_toy(*, seed=0, val_fraction=0.1, augment=True): ...
    """
    key = name.lower()

    def decorate(loader: L) -> L:
        if key in _REGISTRY:
            raise ConfigError(f"data set name {key!r} is already registered")
        _REGISTRY[key] = DatasetSpec(key, loader, tuple(input_shape), on_disk)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def embedded_datasets() -> list[str]:
    """Names of the data sets that need no data directory, sorted."""
    return sorted(name for name, spec in _REGISTRY.items() if not spec.on_disk)


def dataset_spec(name: str) -> DatasetSpec:
    """The registered data set ``name`` (case-insensitive).

    Raises:
        UnknownNameError: if the name is not registered (the message lists the choices).
    """
    spec = _REGISTRY.get(str(name).lower())
    if spec is None:
        raise UnknownNameError("data set", name, list_datasets())
    return spec


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """Load a data set by name as train / val / test splits.

    Args:
        name: One of :func:`list_datasets` (case-insensitive).
        data_dir: Folder of on-disk data sets (the parent of e.g. ``cifar-100-python/``,
            or that folder itself); default ``$SFPK_DATA``. Ignored by the data sets of
            :func:`embedded_datasets`.
        seed: Seed of the train/validation split.
        val_fraction: Fraction of the official training split held out as ``val``, in [0, 1).
        augment: Apply training augmentation to ``train`` (image data sets only).

    Returns:
        The splits with ``num_classes`` and ``input_shape``.

    Raises:
        UnknownNameError: If ``name`` is not a known data set.
        DataError: If an on-disk data set is missing or malformed.
        ConfigError: If ``val_fraction`` is outside [0, 1).

    Example:
        >>> splits = load_dataset("mnist1d", seed=0)
        >>> splits.input_shape, splits.num_classes
        ((40,), 10)
    """
    spec = dataset_spec(name)
    if spec.on_disk:
        return spec.loader(data_dir=data_dir, seed=seed, val_fraction=val_fraction, augment=augment)
    return spec.loader(seed=seed, val_fraction=val_fraction, augment=augment)
