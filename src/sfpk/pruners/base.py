"""The Pruner interface, its registry, and helpers shared by every pruner.

Pruners score, masks select (style.md §2): a pruner returns one score per mask entry
(higher means keep) and :func:`sfpk.selection.select_topk` turns scores into exact 0/1
masks. Pruners that need more than one scoring pass (SynFlow's rounds, the SFPK particle
system) override :meth:`Pruner.prune`.
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

from ..errors import ConfigError, SfpkError, UnknownNameError
from ..masks import Masks, Scope
from ..selection import select_topk

__all__ = [
    "Batch",
    "PruneContext",
    "Pruner",
    "register",
    "create_pruner",
    "methods",
    "pruner_class",
    "batch_stream",
    "to_device",
    "take_batches",
]

Batch = tuple[Tensor, Tensor]
_REGISTRY: dict[str, type[Pruner]] = {}


@dataclass
class PruneContext:
    """What every pruner may use besides the model, data and masks.

    Attributes:
        device: where the computation runs (the model's device).
        seed: the seed of this pruning call; ``generator`` is seeded with it.
        loss_fn: the energy / scoring loss, mean cross-entropy by default.
        progress: show a tqdm bar for long loops.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    progress: bool = False
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)


class Pruner(abc.ABC):
    """Base class: subclasses set ``name``, an ``Options`` dataclass and :meth:`score`.

    ``Options`` is a frozen dataclass whose fields are the method's keyword options (they are
    validated in its ``__post_init__``). ``sfpk.prune(..., method=name, **options)`` builds it.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        """No options."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def score(
        self, model: nn.Module, data: Iterable[Batch], masks: Masks, ctx: PruneContext
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
    ) -> Masks:
        """Score once and select the top entries at ``sparsity``."""
        scores = self.score(model, data, masks, ctx)
        return select_topk(scores, masks, sparsity=sparsity, scope=scope)


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
    allowed = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"method {cls.name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(allowed) or '(none)'}"
        )
    return cls(cls.Options(**options))


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
    one pass, which is an error once it is exhausted.
    """
    reiterable = iter(data) is not data
    while True:
        seen = False
        for batch in data:
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
