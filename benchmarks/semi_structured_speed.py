"""2:4 semi-structured sparsity on a GPU: dense fp16 against torch's sparse kernels.

The prepared measurement of the export issue ("On a GPU ... one prepared script measures
that speed-up"). For each model and batch size it:

1. builds the model in float32, prunes it with ``sfpk.prune(structure="2:4",
   method="mag")`` (exactly 2 of every 4 consecutive input weights kept) and applies the
   masks;
2. copies it to the GPU in float16 twice: one copy stays dense (with the zeros), the other
   gets its 2:4 linear weights converted by ``sfpk.deploy.semi_structured.to_semi_structured_``;
3. checks that both compute the same outputs (fp16 tolerance), then times a forward pass
   of each with CUDA events (median of ``--repeats`` after warm-up), alternately.

Models: ``mlp`` (a 3-layer MLP of width ``--width``, the case the sparse kernels are built
for) and ``gpt`` (the linear layers of one GPT-2-small-sized transformer MLP block, 768 ->
3072 -> 768, on ``--tokens`` tokens per sample). Speed-up = dense ms / semi-structured ms.

    python benchmarks/semi_structured_speed.py [--batches 1 64 512] [--repeats 50]

Writes ``benchmarks/results/semi_structured_speed.json``. ``--check`` runs steps 1-2 on the
CPU without converting (for the tests); without ``--check`` it needs a CUDA GPU of compute
capability 8.0 or newer and exits with sfpk's message otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import sfpk
from sfpk.deploy.semi_structured import (
    check_semi_structured_support,
    semi_structured_layers,
    to_semi_structured_,
)
from sfpk.errors import ConfigError

RESULTS = Path(__file__).resolve().parent / "results" / "semi_structured_speed.json"


def build(name: str, width: int, tokens: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A float32 model and the shape of one input sample (without the batch dim)."""
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width),
        )  # fmt: skip
        return model, (width,)
    if name == "gpt":
        return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)), (tokens, 768)
    raise ConfigError(f"unknown model {name!r}; choose mlp or gpt")


def pruned_pair(
    name: str, width: int, tokens: int, device: torch.device | None
) -> tuple[nn.Module, nn.Module, tuple[int, ...], list[str]]:
    """(dense fp16 copy, 2:4 copy, sample shape, converted names) of a 2:4-pruned model.

    With ``device=None`` (the CPU check) the second copy is not converted.
    """
    model, shape = build(name, width, tokens)
    calibration = [(torch.randn(8, *shape), torch.zeros(8, dtype=torch.long))]
    masks = sfpk.prune(model, calibration, method="mag", sparsity=0.5, structure="2:4")
    masks.apply(model)
    names = semi_structured_layers(model, masks)
    target = device or torch.device("cpu")
    dense = _half_copy(model, target)
    sparse = _half_copy(model, target)
    converted = to_semi_structured_(sparse, names) if device is not None else []
    return dense, sparse, shape, converted


def _half_copy(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device=device, dtype=torch.float16).eval()


def _time_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return times


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per (model, batch): dense and 2:4 latency and the speed-up."""
    device = check_semi_structured_support()
    rows = []
    for name in args.models:
        dense, sparse, shape, converted = pruned_pair(name, args.width, args.tokens, device)
        for batch in args.batches:
            x = torch.randn(batch, *shape, device=device, dtype=torch.float16)
            with torch.inference_mode():
                torch.testing.assert_close(sparse(x), dense(x), atol=5e-2, rtol=5e-2)
            for model in (dense, sparse, dense, sparse):  # warm-up, both kernels
                _time_ms(model, x, 5)
            dense_ms, sparse_ms = [], []
            for _ in range(args.rounds):  # alternate, so both see the same clocks
                dense_ms += _time_ms(dense, x, args.repeats)
                sparse_ms += _time_ms(sparse, x, args.repeats)
            row = {
                "model": name, "batch": batch, "converted": converted,
                "dense_ms": statistics.median(dense_ms), "sparse_ms": statistics.median(sparse_ms),
                "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            }  # fmt: skip
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            rows.append(row)
            print(f"{name:<4} batch {batch:>5}: dense {row['dense_ms']:.3f} ms, 2:4 "
                  f"{row['sparse_ms']:.3f} ms, speed-up {row['speedup']:.2f}x "
                  f"({len(converted)} layers converted)")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure (or, with ``--check``, build on the CPU) and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "gpt"], choices=["mlp", "gpt"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 512])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="build the pair on the CPU only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.check:
        for name in args.models:
            dense, sparse, shape, _ = pruned_pair(name, args.width, args.tokens, None)
            layers = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
            kept = sum(int((m.weight != 0).sum()) for m in layers)
            total = sum(m.weight.numel() for m in layers)
            print(f"{name}: input {shape}, {len(layers)} linear layers, "
                  f"{kept / total:.3f} of the weights kept")  # fmt: skip
        return 0
    try:
        rows = measure(args)
    except ConfigError as error:
        print(f"semi_structured_speed.py: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
