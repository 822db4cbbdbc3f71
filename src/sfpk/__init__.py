"""sfpk: probabilistic neural-network pruning (SFPK, SpODE and baselines) for any nn.Module.

Conventions: ``sparsity`` is the fraction of prunable weights removed; ``density`` the
fraction kept (see :mod:`sfpk.masks.core`).

Layout (``docs/architecture.md``): the subpackages are the concepts, lowest first:
:mod:`sfpk.masks`, :mod:`sfpk.selection`, :mod:`sfpk.models`, :mod:`sfpk.data`,
:mod:`sfpk.training`, :mod:`sfpk.deploy`, :mod:`sfpk.pruners`, :mod:`sfpk.config`,
:mod:`sfpk.pipelines` and :mod:`sfpk.cli`. The top level holds the public surface
(this module, :mod:`sfpk.api` with the argument checks of :mod:`sfpk.prune_args`,
:mod:`sfpk.errors`) and the few modules every layer uses: :mod:`sfpk.losses`,
:mod:`sfpk.index_batches`, :mod:`sfpk.model_state`.
"""

from .api import prune as prune
from .api import run_pruner as run_pruner
from .config.core import Config as Config
from .config.core import build_config as build_config
from .deploy.costs import Costs as Costs
from .deploy.costs import cost_summary as cost_summary
from .deploy.costs import count as count
from .deploy.export import Architecture as Architecture
from .deploy.export import ExportOptions as ExportOptions
from .deploy.export import export as export
from .deploy.export import load_model as load_model
from .deploy.export import read_weights as read_weights
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
    DataMismatchError as DataMismatchError,
)
from .errors import (
    MaskMismatchError as MaskMismatchError,
)
from .errors import (
    NonFiniteError as NonFiniteError,
)
from .errors import (
    SfpkError as SfpkError,
)
from .errors import (
    UnknownNameError as UnknownNameError,
)
from .masks.core import Masks as Masks
from .masks.core import load_masks as load_masks
from .masks.prunable import prunable_parameters as prunable_parameters
from .pruners import PruneObserver as PruneObserver
from .pruners import PruneResult as PruneResult
from .pruners import StartState as StartState
from .pruners import create_pruner as create_pruner
from .pruners import methods as methods
from .pruners import pruner_class as pruner_class
from .selection.topk import select_topk as select_topk
from .training.batchnorm import recalibrate_bn as recalibrate_bn
from .training.trainer import Trainer as Trainer

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Costs",
    "DataError",
    "DataMismatchError",
    "ExportOptions",
    "MaskMismatchError",
    "Masks",
    "NonFiniteError",
    "PruneObserver",
    "PruneResult",
    "SfpkError",
    "StartState",
    "Trainer",
    "UnknownNameError",
    "__version__",
    "build_config",
    "cost_summary",
    "count",
    "create_pruner",
    "export",
    "load_masks",
    "load_model",
    "methods",
    "prunable_parameters",
    "prune",
    "pruner_class",
    "read_weights",
    "run_pruner",
    "recalibrate_bn",
    "select_topk",
]
