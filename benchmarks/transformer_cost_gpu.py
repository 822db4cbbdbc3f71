"""SFPK cost on a GPT-2-small-sized model on CUDA: step cost and memory per particle.

The model is built from a ``GPT2Config`` in code (12 layers, width 768, 12 heads, vocabulary
50,257, 1,024 positions: 124 M parameters, 85 M of them in the prunable attention and MLP
Linears), randomly initialised: nothing is downloaded. It goes through sfpk's Hugging Face
path (:mod:`sfpk.models.hf`: GPT-2's ``Conv1D`` become ``nn.Linear``; embeddings, norms and
the LM head are excluded by default), with the ``sdpa`` attention kernel.

It reports the same figures as ``benchmarks/step_cost.py`` (whose functions it uses):

1. ``ratio`` = seconds per SFPK step / (n × seconds per plain forward+backward), n = 10, on
   one batch of random tokens (``--batch-size`` sequences of ``--tokens``);
2. memory per particle: bytes of particle state, and the slope of the peak CUDA memory
   allocated during SFPK steps against n = 1, 5, 10;
3. an end-to-end ``sfpk.prune(method="sfpk")`` with ``--prune-steps`` steps and n = 10 at
   50 % removed: seconds and exact achieved sparsity (exercises the CUDA selection path).

It needs CUDA and stops with an error without it. About a minute on one H100/H200-class GPU
(fp32; TF32 off, torch's default). ``--tiny`` swaps in a 2-layer width-32 config and allows
the CPU: a smoke test of the code path, not a measurement.

    python benchmarks/transformer_cost_gpu.py --out $OUT/transformer_cost_gpu.json
    python benchmarks/transformer_cost_gpu.py --tiny --device cpu --out /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from step_cost import Workload, measure, memory_curve, print_memory, print_ratios

import sfpk
from sfpk.losses import next_token_loss
from sfpk.models.hf import HFModel, conv1d_to_linear_, default_exclude

RESULTS = Path(__file__).resolve().parent / "results" / "transformer_cost_gpu.json"
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 256, "n_positions": 64,
        "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip


def gpt2_workload(
    sizes: dict[str, int], *, batch_size: int, tokens: int, device: torch.device
) -> Workload:
    """A randomly initialised GPT-2 of ``sizes`` behind sfpk's HFModel, and a random batch."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.pytorch_utils import Conv1D
    except ImportError as err:
        raise SystemExit(
            f"error: this benchmark needs transformers (pip install 'sfpk[hf]'): {err}"
        ) from None
    torch.manual_seed(0)
    config = GPT2Config(**sizes)
    hf = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").float()
    conv1d_to_linear_(hf, Conv1D)
    model = HFModel(hf, "language_model", exclude=default_exclude(hf)).to(device).train()
    vocab = sizes["vocab_size"]
    x = torch.randint(0, vocab, (batch_size, tokens), device=device)
    y = torch.randint(0, vocab, (batch_size, tokens), device=device)
    return Workload("gpt2_small" if sizes is GPT2_SMALL else "gpt2_tiny", model, x, y,
                    next_token_loss)  # fmt: skip


def end_to_end(work: Workload, *, steps: int, particles: int) -> dict[str, Any]:
    """One ``sfpk.prune`` call at 50 % removed with ``steps`` steps; seconds and sparsity."""
    device = work.inputs.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    masks = sfpk.prune(
        work.model, [(work.inputs, work.targets)], method="sfpk", sparsity=0.5,
        loss_fn=work.loss_fn, num_steps=steps, num_particles=particles,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = {
        "steps": steps,
        "particles": particles,
        "seconds": time.perf_counter() - tic,
        "achieved_sparsity": masks.sparsity(),
        "prunable_weights": masks.total_weights(),
    }
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, check the device, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only with --tiny")
    parser.add_argument("--tiny", action="store_true", help="2-layer width-32 smoke config")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--particles", type=int, default=10, help="n of the step-cost ratio")
    parser.add_argument("--memory", default="1,5,10", help="particle counts for the memory")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prune-steps", type=int, default=3, help="0 skips the sfpk.prune")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "error: transformer_cost_gpu.py needs CUDA, and torch.cuda.is_available() is "
            "False (CPU-only torch or no GPU); use --tiny --device cpu for a smoke test"
        )
    if device.type != "cuda" and not args.tiny:
        sys.exit(
            "error: the GPT-2-small measurement runs on CUDA only; pass --tiny for a CPU "
            "smoke test of the code path"
        )
    sizes = TINY if args.tiny else GPT2_SMALL
    tokens = min(args.tokens, sizes["n_positions"])
    tic = time.perf_counter()
    work = gpt2_workload(sizes, batch_size=args.batch_size, tokens=tokens, device=device)
    params = sum(p.numel() for p in work.model.parameters())
    print(f"{work.name}: {params / 1e6:.1f} M parameters on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"batch {args.batch_size} x {tokens} tokens")  # fmt: skip
    ratio = measure(work, particles=args.particles, steps=1, repeats=args.repeats)
    print_ratios([ratio])
    counts = [int(n) for n in args.memory.split(",")]
    curve = memory_curve(work.name, counts, batch_size=args.batch_size,
                         steps=args.memory_steps, device=device, build=lambda: work)  # fmt: skip
    if device.type != "cuda":
        curve["note"] = "CPU smoke run: in-process RSS, not a measurement"
    print_memory([curve])
    prune: dict[str, Any] | None = None
    if args.prune_steps:
        try:
            prune = end_to_end(work, steps=args.prune_steps, particles=args.particles)
        except Exception as err:  # keep the figures above; report the failure, exit 1
            traceback.print_exc()
            prune = {"error": f"{type(err).__name__}: {err}"}
        else:
            print(f"sfpk.prune: {prune['steps']} steps x {prune['particles']} particles in "
                  f"{prune['seconds']:.1f} s, achieved sparsity "
                  f"{prune['achieved_sparsity']:.6f} of {prune['prunable_weights']:,} "
                  "weights")  # fmt: skip
    payload = {
        "torch": torch.__version__, "sfpk": sfpk.__version__, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "config": sizes, "parameters": params, "tokens": tokens, "ratio": ratio,
        "memory": curve, "prune": prune, "wall_seconds": time.perf_counter() - tic,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")
    if prune is not None and "error" in prune:
        sys.exit(f"error: sfpk.prune failed on {device}: {prune['error']}")


if __name__ == "__main__":
    main()
