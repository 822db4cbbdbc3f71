"""Tiny models and random batches shared by the core tests (plain functions, no fixtures).

Every factory is seeded, so two calls with the same seed build identical models. The models
are small enough that any pruning method finishes in milliseconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "mlp",
    "conv_bn_net",
    "residual_net",
    "conv1d_net",
    "nested_net",
    "random_batches",
    "model_and_batches",
    "snapshot",
    "assert_same_state",
    "tiny_options",
]


def mlp(seed: int = 0, bias: bool = True) -> nn.Module:
    """A 3-layer MLP on 12 features, 3 classes; parameters 0.*, 2.*, 4.*."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 10, bias=bias),
        nn.ReLU(),
        nn.Linear(10, 8, bias=bias),
        nn.ReLU(),
        nn.Linear(8, 3, bias=bias),
    )


def conv_bn_net(seed: int = 0) -> nn.Module:
    """Two biased 3x3 convs with BatchNorm, global pooling and a biased classifier (3x8x8 in)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=True),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


class _Block(nn.Module):
    """A basic residual block with a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.block = _Block(4, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(torch.relu(self.stem(x)))
        return self.head(out.mean(dim=(2, 3)))


def residual_net(seed: int = 0) -> nn.Module:
    """Stem conv, one residual block (with BN and a 1x1 shortcut), linear head (3x8x8 in)."""
    torch.manual_seed(seed)
    return _ResidualNet()


def conv1d_net(seed: int = 0) -> nn.Module:
    """A Conv1d net for 1-D signals of shape (2, 16), 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 5, 3, padding=1),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Conv1d(5, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 7, 3),
    )


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict(
            {
                "a": nn.Sequential(nn.Linear(12, 9), nn.ReLU()),
                "b": nn.Sequential(nn.Sequential(nn.Linear(9, 7), nn.Tanh())),
            }
        )
        self.classifier = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features["b"](self.features["a"](x)))


def nested_net(seed: int = 0) -> nn.Module:
    """Linear layers nested in ModuleDict/Sequential containers (12 features in, 3 classes)."""
    torch.manual_seed(seed)
    return _Nested()


# name -> (factory, input shape without batch dim, number of classes)
MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], int]] = {
    "mlp": (mlp, (12,), 3),
    "conv_bn": (conv_bn_net, (3, 8, 8), 4),
    "residual": (residual_net, (3, 8, 8), 5),
    "conv1d": (conv1d_net, (2, 16), 3),
    "nested": (nested_net, (12,), 3),
}


def random_batches(
    input_shape: tuple[int, ...],
    classes: int,
    *,
    count: int = 2,
    batch_size: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[Tensor, Tensor]]:
    """``count`` seeded (inputs, targets) batches, as a list (re-iterable like a DataLoader)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn((batch_size, *input_shape), generator=gen, dtype=dtype),
            torch.randint(0, classes, (batch_size,), generator=gen),
        )
        for _ in range(count)
    ]


def model_and_batches(
    name: str, seed: int = 0, count: int = 2
) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """A model from :data:`MODELS` and matching random batches."""
    factory, shape, classes = MODELS[name]
    return factory(seed), random_batches(shape, classes, count=count, seed=seed + 1)


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything ``sfpk.prune`` promises not to change: tensors, modes and requires_grad."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def assert_same_state(model: nn.Module, before: dict[str, object]) -> None:
    """Assert ``model`` still matches a :func:`snapshot` exactly."""
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def tiny_options(method: str) -> dict[str, object]:
    """The cheapest options a method accepts (decided from its Options fields)."""
    import dataclasses

    import sfpk

    fields = {f.name for f in dataclasses.fields(sfpk.pruner_class(method).Options)}
    cheap = {"rounds": 3, "num_steps": 3, "num_particles": 2, "batches": 2}
    return {k: v for k, v in cheap.items() if k in fields}


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_rank(rank: int, world: int, port: int, out_dir: str, work: Callable[[int], Any]) -> None:
    """One spawned rank: join the gloo group on 127.0.0.1 as torchrun would, save work(rank)."""
    import datetime
    import os

    from sfpk.training import distributed

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if not distributed.init_from_env("cpu", timeout=datetime.timedelta(seconds=60)):
        raise RuntimeError("init_from_env ignored the torchrun environment")
    try:
        torch.save(work(rank), Path(out_dir) / f"rank{rank}.pt")
        distributed.barrier()  # leave together, as the CLI does
    finally:
        distributed.shutdown()


def run_gloo_ranks(work: Callable[[int], Any], world: int, out: Path) -> list[Any]:
    """``work(rank)`` on each of ``world`` spawned gloo processes (one thread each), the
    results in rank order. ``work`` must be picklable (a module-level function or a
    ``functools.partial`` of one).

    A rank killed by a signal (not a Python exception) gets one more try on a fresh port:
    CI once saw rank 0, the TCPStore host, abort in gloo's C++ teardown ("terminate called
    without an active exception"), which never reproduced in hundreds of local runs. A
    second signal death, or any Python exception in a rank, fails the test; a retry shows as
    a warning in the test report.
    """
    import warnings

    import torch.multiprocessing as mp

    for attempt in range(2):
        try:
            mp.spawn(_gloo_rank, args=(world, _free_port(), str(out), work), nprocs=world)
            break
        except mp.ProcessExitedException as error:
            if attempt == 1 or error.signal_name is None:
                raise
            warnings.warn(f"gloo rank died by {error.signal_name}; retrying once", stacklevel=2)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
