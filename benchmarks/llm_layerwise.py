"""Layer-wise pruning of a small trained LM: perplexity and seconds of every method.

Trains a small causal LM on sfpk's generated ``tinytext`` corpus (bytes, vocabulary 256;
no download), caches it, then prunes a copy with each layer-wise method of
:func:`sfpk.llm.prune_layerwise` at 50 % unstructured (per output row) and at 2:4, and
measures held-out perplexity with :func:`sfpk.llm.perplexity` (non-overlapping windows).
Each seed draws its own calibration windows (and SFPK/SpODE their own mini-batches).
Prints a table (mean ± sd over seeds) and writes ``benchmarks/results/llm_layerwise.json``.

Usage: python benchmarks/llm_layerwise.py [--model gpt_tiny|llama] [--seeds 0,1,2]
       [--methods mag,wanda,sparsegpt,spode,sfpk] [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from sfpk.data.tinytext import generate_tinytext
from sfpk.data.tokenizer import encode_bytes
from sfpk.llm import perplexity, prune_layerwise, sample_calibration
from sfpk.models import create

RESULTS = Path(__file__).resolve().parent / "results"
SEQLEN = 64


def build(kind: str) -> torch.nn.Module:
    """A fresh small LM: gpt_tiny (dim 64, 3 blocks) or a Llama of the same size."""
    torch.manual_seed(0)
    if kind == "gpt_tiny":
        return create("gpt_tiny", num_classes=256, context=SEQLEN, dim=64, depth=3)
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQLEN,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def trained(kind: str, train: torch.Tensor, steps: int, cache: Path) -> torch.nn.Module:
    """The model trained for ``steps`` AdamW steps (cached in ``cache``)."""
    model = build(kind)
    path = cache / f"{kind}_{steps}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path))
        return model.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, train.numel() - SEQLEN - 1, (16,), generator=generator)
        batch = torch.stack([train[s : s + SEQLEN + 1] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 50) * (1 - step / steps) + 1e-4
        out = logits(model, batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"train step {step} loss {loss.item():.3f}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt_tiny", choices=["gpt_tiny", "llama"])
    parser.add_argument("--methods", default="mag,wanda,sparsegpt,spode,sfpk")
    parser.add_argument("--structures", default="unstructured,2:4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="SFPK/SpODE num_steps")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--update-weights", default="true", choices=["true", "false"])
    parser.add_argument("--selection", default="adaptive", choices=["vote", "adaptive"])
    parser.add_argument("--energy", default="compensated", choices=["plain", "compensated"])
    parser.add_argument("--rank-by", default="metric", choices=["metric", "weight"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="/tmp/sfpk_llm_layerwise")
    parser.add_argument("--out", default=str(RESULTS / "llm_layerwise.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = encode_bytes(generate_tinytext(400_000))
    split = int(0.9 * tokens.numel())
    train, test = tokens[:split], tokens[split:]
    dense = trained(args.model, train, args.train_steps, Path(args.cache))
    rows = [{"method": "dense", "structure": "-", "ppl": [perplexity(dense, test, seqlen=SEQLEN)],
             "seconds": [0.0]}]  # fmt: skip
    for structure in args.structures.split(","):
        for method in args.methods.split(","):
            options = None
            if method in ("sfpk", "spode"):
                options = {
                    "num_steps": args.steps,
                    "update_weights": args.update_weights == "true",
                    "selection": args.selection,
                    "energy": args.energy,
                    "rank_by": args.rank_by,
                }
                if method == "sfpk":
                    options["num_particles"] = args.particles
            row = {"method": method, "structure": structure, "ppl": [], "seconds": []}
            for seed in (int(s) for s in args.seeds.split(",")):
                model = copy.deepcopy(dense)
                calib = sample_calibration(
                    train, num_samples=args.samples, seqlen=SEQLEN, seed=seed
                )
                result = prune_layerwise(
                    model, calib, method=method, sparsity=0.5, seed=seed, options=options,
                    structure=None if structure == "unstructured" else structure,
                )  # fmt: skip
                row["ppl"].append(perplexity(model, test, seqlen=SEQLEN))
                row["seconds"].append(result.seconds)
                row["sparsity"] = result.masks.sparsity()
            rows.append(row)
            print(_line(row), flush=True)
    print(f"\n{args.model}, tinytext bytes, {args.samples} x {SEQLEN} calibration, "
          f"seeds {args.seeds}, {args.threads} thread(s)")  # fmt: skip
    print(f"{'method':10s} {'structure':12s} {'ppl':>16s} {'seconds':>14s}")
    for row in rows:
        print(_line(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "time": time.time()}, indent=1))


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _line(row: dict) -> str:
    return (f"{row['method']:10s} {row['structure']:12s} {_stat(row['ppl']):>16s} "
            f"{_stat(row['seconds']):>14s}")  # fmt: skip


if __name__ == "__main__":
    main()
