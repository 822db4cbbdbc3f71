"""The Pruner contract, its registry, and helpers shared by every pruner.

One way in, one way out: every method implements :meth:`Pruner.prune`, which takes the
model, the data, the current masks and the target, and returns a :class:`PruneResult`
(the masks, a per-step history and the state to continue from). What a method needs
besides that comes in three separate arguments, so that method options stay pure
hyperparameters:

* :class:`PruneContext`: where and how to compute (device, seed, loss, distributed split);
* :class:`StartState`: a state to continue from (the previous call's ``PruneResult.state``,
  iterative rounds) or to resume (a mid-call checkpoint of an interrupted call);
* :class:`PruneObserver`: progress bar, per-step trace and periodic checkpoints.

Why a result object rather than a stateful pruner that lives across rounds: the pipelines
must write the state to disk anyway (a killed run resumes from its checkpoint, in a new
process), so the state has to be plain data; passing it in and out explicitly keeps one
code path for "next round" and "resumed round", and a pruner object stays a function of
its options.

Two families implement the contract. :class:`ScorePruner` methods score (one score per mask
entry, higher means keep) and :func:`sfpk.selection.topk.select_topk` selects, once or over
``rounds`` re-scoring rounds (style.md §2). The particle methods (``sfpk``, ``spode``,
:mod:`sfpk.pruners.particles`) simulate and then select from their final score.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import ConfigError, SfpkError, UnknownNameError, check_fields, resolve_fields
from ..index_batches import iterate_fast
from ..masks.core import Masks, Scope
from ..selection.collapse import Guard
from ..selection.topk import round_sparsity, select_topk
from ..training.precision import autocast

__all__ = [
    "Batch",
    "PruneContext",
    "PruneObserver",
    "PruneResult",
    "Pruner",
    "ScorePruner",
    "StartState",
    "register",
    "create_pruner",
    "resolve_options",
    "methods",
    "pruner_class",
    "batch_stream",
    "to_device",
    "take_batches",
]

Batch = tuple[Tensor, Tensor]
StateCallback = Callable[[dict[str, Any]], None]
_REGISTRY: dict[str, type[Pruner]] = {}


@dataclass
class PruneContext:
    """Where and how a pruning call computes; the same for every method.

    Attributes:
        device: where the computation runs (the model's device).
        seed: the seed of this pruning call; ``generator`` is seeded with it.
        loss_fn: the energy / scoring loss, mean cross-entropy by default.
        distributed: split work over the ranks of an initialised ``torch.distributed``
            group (``torchrun``): None (default) when one with more than one rank exists,
            True to require one, False never. Methods without per-rank work ignore it.
        collapse_guard: the final selection's guard against disconnected layers
            (:mod:`sfpk.selection.collapse`): ``"row"``, ``"layer"`` or ``"off"``.
        round_to: every selection keeps a multiple of this many filters/channels per
            block, or all (:mod:`sfpk.selection.aligned`); None or 1: no rounding. The particle
            engine's in-simulation thresholds ignore it.
        particle_batching: how the particle methods run their n forward+backward passes:
            ``"loop"`` (one per particle), ``"vmap"`` (one batched pass, torch.func) or
            ``"auto"`` (vmap on accelerators, the loop on CPU; see
            :mod:`sfpk.pruners.particles.batching`). Other methods ignore it.
        precision: the forward passes' precision, ``"fp32"``, ``"bf16"`` or ``"fp16"``
            (:mod:`sfpk.training.precision`); scores, particles and masks stay fp32.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    distributed: bool | None = None
    collapse_guard: Guard = "row"
    round_to: int | None = None
    particle_batching: str = "auto"
    precision: str = "fp32"
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)


@dataclass(frozen=True)
class StartState:
    """A method state a pruning call starts from.

    Attributes:
        state: a ``PruneResult.state`` (``resume=False``: continue from the end of the
            previous call, e.g. the last iterative round) or a state given to
            ``PruneObserver.on_checkpoint`` (``resume=True``: finish the interrupted call
            that saved it; the data must replay the same batches).
        resume: which of the two ``state`` is.
    """

    state: dict[str, Any]
    resume: bool = False


@dataclass(frozen=True)
class PruneObserver:
    """How a caller watches and checkpoints a long pruning call; never changes its result.

    Attributes:
        progress: show a tqdm bar for long loops.
        on_step: receives each per-step history record as it is made.
        trace: receives a dict of cloned per-step tensors (tests, debugging; slow).
        checkpoint_every: call ``on_checkpoint`` every this many steps (0: never).
        on_checkpoint: receives a resumable state (pass it back as
            ``StartState(state, resume=True)``).
    """

    progress: bool = False
    on_step: StateCallback | None = None
    trace: StateCallback | None = None
    checkpoint_every: int = 0
    on_checkpoint: StateCallback | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every!r} must be >= 0")


@dataclass(frozen=True)
class PruneResult:
    """What a pruning call returns.

    Attributes:
        masks: the exact 0/1 masks.
        history: one record per simulation step (particle methods; empty otherwise).
        state: the method's final state, to continue from in the next call
            (``StartState(state)``); None for stateless methods.
    """

    masks: Masks
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None


class Pruner(abc.ABC):
    """The contract of every method: build from options, then :meth:`prune`.

    Subclasses set ``name`` (the registry key) and ``Options``, a frozen dataclass whose
    fields are the method's hyperparameters (validated in its ``__post_init__``);
    ``sfpk.prune(..., method=name, **options)`` builds it.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # False: never runs the model on the data's batches
    uses_loss: ClassVar[bool] = True  # False: forward passes only (no loss of the targets)
    default_scope: ClassVar[Scope] = "global"  # the scope when the caller gives none

    @dataclass(frozen=True)
    class Options:
        """No options."""

    def __init__(self, options: Any = None) -> None:
        if options is None:
            options = self.Options()
        elif not isinstance(options, self.Options):
            raise ConfigError(
                f"method {self.name!r} takes a {self.Options.__qualname__}, "
                f"not {type(options).__name__}"
            )
        check_fields(options)  # an Options built directly is checked like create_pruner's
        self.options = options

    @abc.abstractmethod
    def prune(
        self,
        model: nn.Module,
        data: Iterable[Batch],
        masks: Masks,
        *,
        sparsity: float,
        scope: Scope,
        ctx: PruneContext,
        start: StartState | None = None,
        observer: PruneObserver | None = None,
    ) -> PruneResult:
        """Prune from ``masks`` to ``sparsity`` (fraction removed) and return the result.

        The model's weights are read, never written; :func:`sfpk.prune` restores its mode,
        buffers and ``requires_grad`` flags afterwards.
        """


class ScorePruner(Pruner):
    """A method that scores (higher means keep) and lets :func:`select_topk` select.

    ``rounds`` > 1 re-scores the masked network that many times on an exponential schedule
    that ends at the target (SynFlow); :meth:`setup` runs once before the rounds.
    """

    def rounds(self) -> int:
        """How many score-and-select rounds one call makes (1 by default)."""
        return 1

    def setup(self, model: nn.Module, data: Iterable[Batch], ctx: PruneContext) -> Any:
        """Work shared by every round (passed to :meth:`score` as ``prepared``)."""
        return None

    @abc.abstractmethod
    def score(
        self,
        model: nn.Module,
        data: Iterable[Batch],
        masks: Masks,
        ctx: PruneContext,
        prepared: Any = None,
    ) -> dict[str, Tensor]:
        """One score per mask entry, shaped like ``masks``; higher means keep."""

    def prune(
        self,
        model: nn.Module,
        data: Iterable[Batch],
        masks: Masks,
        *,
        sparsity: float,
        scope: Scope,
        ctx: PruneContext,
        start: StartState | None = None,
        observer: PruneObserver | None = None,
    ) -> PruneResult:
        """Score and select, round by round; the last round lands on ``sparsity``."""
        if start is not None:
            raise ConfigError(f"method {self.name!r} keeps no state to start from")
        prepared = self.setup(model, data, ctx)
        rounds = self.rounds()
        for k in range(rounds):
            with autocast(ctx.device, ctx.precision):  # forward passes only; scores are fp32
                scores = self.score(model, data, masks, ctx, prepared)
            scores = {name: score.float() for name, score in scores.items()}
            target = round_sparsity(sparsity, k, rounds)
            masks = select_topk(
                scores,
                masks,
                sparsity=target,
                scope=scope,
                guard=ctx.collapse_guard,
                round_to=ctx.round_to,
            )
        return PruneResult(masks)


def register(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: add a pruner to the registry under ``cls.name`` (lowercase)."""
    key = cls.name.lower()
    if key in _REGISTRY:
        raise ConfigError(f"pruner name {key!r} is already registered by {_REGISTRY[key]}")
    _REGISTRY[key] = cls
    return cls


def methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def pruner_class(name: str) -> type[Pruner]:
    """The pruner class registered as ``name`` (case-insensitive)."""
    cls = _REGISTRY.get(str(name).lower())
    if cls is None:
        raise UnknownNameError("method", name, methods())
    return cls


def create_pruner(name: str, **options: Any) -> Pruner:
    """Build the pruner ``name`` with its keyword options.

    Raises:
        UnknownNameError: unknown method.
        ConfigError: an option the method does not have, or a bad option value.
    """
    cls = pruner_class(name)
    return cls(cls.Options(**resolve_options(cls, options)))


def resolve_options(cls: type[Pruner], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the fields of ``cls.Options`` and resolved to their types.

    The one place method options from ``--option``, YAML and the API are checked before
    the ``Options`` dataclass (whose ``__post_init__`` checks the ranges) is built: unknown
    names, wrong types (``num_steps="abc"``, ``num_steps=2.5``), NaN and infinity.

    Raises:
        ConfigError: naming the option, its value and what is allowed.
    """
    allowed = [f.name for f in dataclasses.fields(cls.Options) if f.init]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"method {cls.name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(allowed) or '(none)'}"
        )
    return resolve_fields(cls.Options, options, prefix=f"{cls.name} option ")


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move an ``(inputs, targets)`` batch to ``device``."""
    try:
        inputs, targets = batch
    except (TypeError, ValueError):
        raise SfpkError(
            f"data must yield (inputs, targets) pairs; got {type(batch).__name__}"
        ) from None
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def batch_stream(data: Iterable[Batch]) -> Iterator[Batch]:
    """Yield batches forever, starting a new pass over ``data`` when one ends.

    ``data`` must be re-iterable (a DataLoader, a list); a one-shot iterator can only give
    one pass, which is an error once it is exhausted. A DataLoader over in-memory tensors
    is batched by index slicing, with the same batches (:mod:`sfpk.index_batches`).
    """
    reiterable = iter(data) is not data
    while True:
        seen = False
        passes = iterate_fast(data) if isinstance(data, DataLoader) else data
        for batch in passes:
            seen = True
            yield batch
        if not seen:
            raise SfpkError("the pruning data yielded no batch")
        if not reiterable:
            raise SfpkError(
                "the pruning data ran out: pass a re-iterable (DataLoader or list), "
                "not a one-shot iterator"
            )


def take_batches(data: Iterable[Batch], count: int | None) -> list[Batch] | Iterable[Batch]:
    """The first ``count`` batches of ``data`` (cycling if it is shorter), or all if None."""
    if count is None:
        return data
    stream = batch_stream(data)
    return [next(stream) for _ in range(count)]
