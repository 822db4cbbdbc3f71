"""Pruning methods behind one contract and one registry (see :mod:`.base`).

``scores`` holds the score-and-select baselines (rand, mag, snip, grasp, synflow) and
``wanda`` the activation-aware one;
``particles`` the SFPK particle engine (sfpk, spode). Importing this package registers them.

Pruners score; :mod:`sfpk.selection` turns scores into masks. May import errors,
:mod:`sfpk.index_batches`, masks, selection and training (precision, distributed), never
config, pipelines or the CLI (``tests/api/test_architecture.py``).
"""

from . import particles as _particles  # noqa: F401  (registers sfpk, spode)
from . import scores as _scores  # noqa: F401  (registers rand, mag, snip, grasp, synflow)
from . import wanda as _wanda  # noqa: F401  (registers wanda)
from .base import (
    Batch,
    PruneContext,
    PruneObserver,
    Pruner,
    PruneResult,
    ScorePruner,
    StartState,
    batch_stream,
    create_pruner,
    methods,
    pruner_class,
    register,
)

__all__ = [
    "Batch",
    "PruneContext",
    "PruneObserver",
    "PruneResult",
    "Pruner",
    "ScorePruner",
    "StartState",
    "batch_stream",
    "create_pruner",
    "methods",
    "pruner_class",
    "register",
]
