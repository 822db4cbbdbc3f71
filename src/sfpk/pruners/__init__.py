"""Pruning methods behind one registry: ``create_pruner(name, **options)``."""

from . import particles as _particles  # noqa: F401  (registers sfpk, spode)
from . import scores as _scores  # noqa: F401  (registers rand, mag, snip, grasp, synflow)
from .base import (
    Batch,
    PruneContext,
    Pruner,
    batch_stream,
    create_pruner,
    methods,
    pruner_class,
    register,
)

__all__ = [
    "Batch",
    "PruneContext",
    "Pruner",
    "batch_stream",
    "create_pruner",
    "methods",
    "pruner_class",
    "register",
]
