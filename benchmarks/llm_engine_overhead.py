"""Per-step cost of layer-wise SFPK: the whole-model particle engine vs sfpk.llm's loop.

Option (a) of issue #22 hands the engine (:func:`sfpk.prune`, method ``sfpk``) a one-layer
``nn.Linear`` whose "data" are columns of ``F = H^{1/2}`` (inputs) and ``W F`` (targets), with
a squared-error loss, so each mini-batch is the energy estimate ``E_B``. Option (b) is
:func:`sfpk.llm.particles.particle_scores`. Both run the same n particles for N steps on the
same layer; the ratio of their seconds is printed and written to
``benchmarks/results/llm_engine_overhead.json``.

Usage: python benchmarks/llm_engine_overhead.py [--sizes 128,256,512] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import sfpk
from sfpk.llm.particles import ParticleOptions, hessian_sqrt, particle_scores

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(size, size, generator=gen) / size**0.5
        inputs = torch.randn(4 * size, size, generator=gen)
        hessian = inputs.T @ inputs / inputs.shape[0]
        factor = hessian_sqrt(hessian)
        batch = size // 4
        layer = nn.Linear(size, size, bias=False)
        layer.weight.data.copy_(weight)
        x = factor.T  # sample j = column j of F
        y = x @ weight.T
        data = [(x[i : i + batch], y[i : i + batch]) for i in range(0, size, batch)]

        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (out - target).square().sum()

        began = time.perf_counter()
        sfpk.prune(
            layer, data, method="sfpk", sparsity=0.5, scope="row", loss_fn=loss,
            num_steps=args.steps, num_particles=args.particles,
        )  # fmt: skip
        engine = time.perf_counter() - began
        began = time.perf_counter()
        particle_scores(
            weight, hessian, sparsity=0.5, nm=None, generator=torch.Generator().manual_seed(0),
            options=ParticleOptions(num_steps=args.steps, num_particles=args.particles),
        )  # fmt: skip
        loop = time.perf_counter() - began
        rows.append({"size": size, "engine_s": engine, "llm_loop_s": loop, "ratio": engine / loop})
        print(f"{size}x{size}: engine {engine:.3f} s, sfpk.llm loop {loop:.3f} s, "
              f"ratio {engine / loop:.2f}", flush=True)  # fmt: skip
    out = RESULTS / "llm_engine_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
