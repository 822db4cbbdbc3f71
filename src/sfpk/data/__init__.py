"""Data sets with train / val / test splits, and reproducible loaders.

``load_dataset(name)`` returns :class:`DataSplits`: ``train`` (augmented), ``val`` (carved
from the official training split, evaluation transforms) and ``test`` (the official test
split). See :mod:`sfpk.data.base` for the item and seeding conventions. On-disk data sets
are read from ``data_dir`` or ``$SFPK_DATA`` and are never downloaded.

Language-model data sets (``task="language_model"``): ``text:<file or folder>`` reads local
text (:mod:`sfpk.data.text`) and ``tinytext`` is a corpus sfpk generates
(:mod:`sfpk.data.tinytext`); their items are next-token pairs of int64 token ids.

Data sets live in one registry (:mod:`sfpk.data.registry`); importing this package
registers every loader of the modules below. May import only :mod:`sfpk.errors`,
:mod:`sfpk.losses` (each data set names its task) and :mod:`sfpk.index_batches`
(``tests/api/test_architecture.py``).
"""

from __future__ import annotations

# Imported for their @register_dataset side effect.
from . import cifar, embedded, imagefolder, text, tinytext  # noqa: F401
from .base import DataSplits, make_loader
from .registry import (
    DatasetSpec,
    check_dataset_options,
    dataset_argument,
    dataset_prefixes,
    dataset_spec,
    embedded_datasets,
    list_datasets,
    load_dataset,
    register_dataset,
    register_dataset_prefix,
)
from .tokenizer import load_tokenizer

__all__ = [
    "DataSplits",
    "DatasetSpec",
    "check_dataset_options",
    "dataset_argument",
    "dataset_prefixes",
    "dataset_spec",
    "embedded_datasets",
    "list_datasets",
    "load_dataset",
    "load_tokenizer",
    "make_loader",
    "register_dataset",
    "register_dataset_prefix",
]
