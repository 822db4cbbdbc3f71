"""sfpk: probabilistic neural-network pruning (SFPK, SpODE and baselines) for any nn.Module.

Conventions: ``sparsity`` is the fraction of prunable weights removed; ``density`` the
fraction kept (see :mod:`sfpk.masks`).
"""

from .api import prune as prune
from .api import run_pruner as run_pruner
from .batchnorm import recalibrate_bn as recalibrate_bn
from .config import Config as Config
from .config import build_config as build_config
from .errors import (
    CheckpointError as CheckpointError,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    DataError as DataError,
)
from .errors import (
    MaskMismatchError as MaskMismatchError,
)
from .errors import (
    SfpkError as SfpkError,
)
from .errors import (
    UnknownNameError as UnknownNameError,
)
from .masks import Masks as Masks
from .masks import load_masks as load_masks
from .prunable import prunable_parameters as prunable_parameters
from .pruners import PruneObserver as PruneObserver
from .pruners import PruneResult as PruneResult
from .pruners import StartState as StartState
from .pruners import create_pruner as create_pruner
from .pruners import methods as methods
from .pruners import pruner_class as pruner_class
from .selection import select_topk as select_topk
from .train import Trainer as Trainer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "MaskMismatchError",
    "Masks",
    "PruneObserver",
    "PruneResult",
    "SfpkError",
    "StartState",
    "Trainer",
    "UnknownNameError",
    "__version__",
    "build_config",
    "create_pruner",
    "load_masks",
    "methods",
    "prunable_parameters",
    "prune",
    "pruner_class",
    "run_pruner",
    "recalibrate_bn",
    "select_topk",
]
