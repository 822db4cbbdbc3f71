"""LLM pruning (issue #22): layer-wise perplexity on a small Llama, and the cost on GPT-2 small.

Two parts, each printing a table and writing JSON under ``benchmarks/results/``:

``quality`` (``llm.json``): a small ``LlamaForCausalLM`` trained here on the Python standard
library's own sources (split by file, see ``benchmarks/llm_dense.py``; trained once, then
cached outside the repository). Each (method, sparsity, calibration seed) prunes a copy of
the dense model with :func:`sfpk.llm.prune_layerwise` on ``--calib-samples`` windows of
``--seqlen`` tokens drawn from the calibration split (:func:`sfpk.llm.sample_calibration`,
seeded), then measures :func:`sfpk.llm.perplexity` on the test split (non-overlapping
windows of ``--seqlen``, the first ``--eval-tokens`` tokens). Sparsities are fractions
removed per row (``0.5``) or ``N:M`` patterns (``2:4`` keeps 2 of every 4). Magnitude does
not read the calibration data, so it runs for the first of ``--seeds`` only. Each
row records the pruning seconds and the peak RSS above the RSS before the call (the peak
is reset before each run: ``/proc/self/clear_refs``).

``scale`` (``llm_scale.json``): GPT-2 small (``GPT2Config()`` defaults, 124 M parameters,
random init: its quality means nothing, its cost is real) pruned layer-wise by wanda,
sparsegpt and sfpk with ``--samples`` x ``--seqlen`` random calibration tokens. Seconds per
block and the process's peak RSS (against the fp32 model size). ``--blocks K`` keeps only
the first K of the 12 blocks (what a shared 2-core machine can afford); the full-model
seconds are then extrapolated from the mean seconds per block, and labelled so.

    nice -n 15 python benchmarks/llm.py quality                       # the full table
    python benchmarks/llm.py quality --quick                          # minutes: 50 %, 2:4, seed 0
    python benchmarks/llm.py quality --methods wanda,sparsegpt --sparsities 0.5,2:4 --resume
    nice -n 15 python benchmarks/llm.py scale                         # GPT-2 small, 12 blocks
    python benchmarks/llm.py scale --blocks 2 --samples 32            # a labelled partial run
    python benchmarks/llm.py scale --device cuda                      # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import llm_dense  # noqa: I001 (a sibling module of this folder)
import torch

import sfpk
from sfpk.llm import perplexity, prune_layerwise, sample_calibration

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("mag", "wanda", "sparsegpt", "spode", "sfpk")
SPARSITIES = ("0.5", "0.6", "0.7", "4:8", "2:4")
SCALE_METHODS = ("wanda", "sparsegpt", "sfpk")
SEED_FREE = frozenset({"mag"})  # methods that read no calibration data and draw nothing


def _log(line: str) -> None:
    print(line, flush=True)  # visible at once when redirected to a file


# --------------------------------------------------------------------------- memory


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's current (``VmRSS``) or peak (``VmHWM``) resident set size in bytes;
    ``ru_maxrss`` where ``/proc`` is absent (then both are the peak)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))
    return int(kib) * 1024


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where that is refused,
    and the peaks read afterwards are then the process's high-water mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def structure_of(token: str) -> tuple[float, str | None]:
    """``"0.5"`` -> (0.5, None); ``"2:4"`` -> (0.5, "2:4"): the fraction removed and pattern."""
    if ":" in token:
        n, m = (int(part) for part in token.split(":"))
        return 1.0 - n / m, token
    return float(token), None


def _sparsities(text: str) -> list[str]:
    """``--sparsities``: fractions in [0, 1) and ``N:M`` patterns with 0 < N < M."""
    tokens = _csv(text)
    for token in tokens:
        try:
            sparsity, _ = structure_of(token)
        except (ValueError, ZeroDivisionError):
            sparsity = math.nan
        if not 0.0 <= sparsity < 1.0:
            raise argparse.ArgumentTypeError(
                f"sparsity {token!r}: give a fraction removed in [0, 1) such as 0.5, or an "
                "N:M pattern with 0 < N < M such as 2:4"
            )
    return tokens


def _label(token: str) -> str:
    sparsity, structure = structure_of(token)
    return structure if structure else f"{100 * sparsity:.0f} %"


# --------------------------------------------------------------------------- quality


def method_options(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``method`` given by ``--options`` (a JSON object per method)."""
    return dict(args.options.get(method, {}))


def prune_one(
    dense: torch.nn.Module,
    calibration: torch.Tensor,
    test: torch.Tensor,
    *,
    method: str,
    token: str,
    seed: int,
    seqlen: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Prune a copy of ``dense``; the row of its perplexity, seconds and peak memory."""
    model = copy.deepcopy(dense)
    sparsity, structure = structure_of(token)
    reset_peak()
    before = rss_bytes()
    tic = time.perf_counter()
    result = prune_layerwise(
        model, calibration, method=method, sparsity=sparsity, structure=structure,
        options=options, seed=seed,
    )  # fmt: skip
    seconds = time.perf_counter() - tic
    peak = rss_bytes("VmHWM")
    ppl = perplexity(model, test, seqlen=seqlen)
    return {
        "method": method, "sparsity": token, "seed": seed, "ppl": ppl,
        "achieved_sparsity": result.masks.sparsity(), "prune_seconds": seconds,
        "block_seconds": list(result.block_seconds),
        "peak_above_mb": (peak - before) / 2**20, "peak_rss_mb": peak / 2**20,
        "reported_peak_rss_mb": result.peak_rss_mb, "options": options, "commit": _commit(),
        "load_average": list(_loadavg()),
    }  # fmt: skip


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds of each (method, sparsity)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["sparsity"]), []).append(row)
    out = []
    for (method, token), members in groups.items():
        entry: dict[str, Any] = {"method": method, "sparsity": token, "seeds": len(members)}
        for key in ("ppl", "prune_seconds", "peak_above_mb", "achieved_sparsity"):
            values = [m[key] for m in members]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def quality_tables(summary: Sequence[dict[str, Any]], dense: dict[str, Any]) -> str:
    """Perplexity (mean ± sd) and cost (seconds, peak MB above the start) tables, Markdown."""
    tokens = list(dict.fromkeys(e["sparsity"] for e in summary))
    tokens.sort(key=lambda t: (":" in t, structure_of(t)[0] if ":" not in t else -int(t[0])))
    methods = [m for m in METHODS if any(e["method"] == m for e in summary)]
    methods += sorted({e["method"] for e in summary} - set(methods))
    by = {(e["method"], e["sparsity"]): e for e in summary}
    head = " | ".join(_label(t) for t in tokens)
    rule = "|---|" + "---|" * len(tokens)
    lines = [
        f"test perplexity (lower is better), mean ± sd over calibration seeds "
        f"[n seeds]; dense {dense['ppl']:.2f}, unigram {dense['unigram_ppl']:.1f}",
        f"| method | {head} |", rule,
    ]  # fmt: skip
    for method in methods:
        cells = []
        for t in tokens:
            e = by.get((method, t))
            cells.append("" if e is None else f"{e['ppl']:.2f} ± {e['ppl_sd']:.2f} [{e['seeds']}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "pruning seconds / peak RSS above the start (MB), mean over seeds",
              f"| method | {head} |", rule]  # fmt: skip
    for method in methods:
        cells = []
        for t in tokens:
            e = by.get((method, t))
            cells.append(
                "" if e is None else f"{e['prune_seconds']:.1f} s / {e['peak_above_mb']:.0f}"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    """The quality part: dense model (cached), then every (seed, sparsity, method)."""
    settings = llm_dense.TINY if args.tiny else llm_dense.DenseSettings()
    if args.train_steps is not None:
        settings = replace(settings, steps=args.train_steps)
    cache = Path(args.cache) if args.cache else None
    dense = llm_dense.load_or_train(settings, cache=cache, log=_log)
    seqlen = args.seqlen or settings.context
    test = dense.tokens["test"][: args.eval_tokens] if args.eval_tokens else dense.tokens["test"]
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}
    sources = [Path(f) for f in args.include] + ([out] if args.resume and out.is_file() else [])
    for source in sources:  # rows measured earlier (or by another process) under this protocol
        earlier = json.loads(source.read_text())
        if earlier.get("dense", {}).get("key") != dense.info["key"] or earlier.get(
            "protocol"
        ) != _protocol(args, seqlen, test):
            raise SystemExit(f"error: {source} was measured with other settings")
        have = {(r["method"], r["sparsity"], r["seed"]) for r in rows}
        rows += [r for r in earlier["rows"] if (r["method"], r["sparsity"], r["seed"]) not in have]
        previous = earlier
    done = {(r["method"], r["sparsity"], r["seed"]) for r in rows}
    dense_ppl = previous.get("dense", {}).get("ppl") or perplexity(dense.model, test, seqlen=seqlen)
    unigram = math.exp(llm_dense.unigram_nll(dense.tokens["train"], test, dense.info["vocab_size"]))
    dense_row = {
        **dense.info, "ppl": dense_ppl, "eval_tokens": int(test.numel()),
        "unigram_ppl": unigram, "unigram_ppl_whole_test": dense.info["unigram_ppl"],
    }  # fmt: skip
    _log(f"dense test ppl {dense_ppl:.2f} (unigram {unigram:.1f}) on "
         f"{test.numel()} test tokens, windows of {seqlen}")  # fmt: skip
    start = time.perf_counter()

    def write() -> dict[str, Any]:
        payload = {
            "part": "quality", "sfpk": sfpk.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "quick": args.quick, "tiny": args.tiny, "protocol": _protocol(args, seqlen, test),
            "dense": dense_row, "summary": aggregate(rows), "rows": rows,
            "wall_seconds": time.perf_counter() - start + previous.get("wall_seconds", 0.0),
            "load_average": list(_loadavg()),
        }  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=_json) + "\n")
        return payload

    for seed in [] if args.report_only else args.seeds:
        calibration = sample_calibration(
            dense.tokens["calibration"], num_samples=args.calib_samples, seqlen=seqlen, seed=seed
        )
        for token in args.sparsities:
            for method in args.methods:
                if (method, token, seed) in done or (method in SEED_FREE and seed != args.seeds[0]):
                    continue
                row = prune_one(
                    dense.model, calibration, test, method=method, token=token, seed=seed,
                    seqlen=seqlen, options=method_options(method, args),
                )  # fmt: skip
                rows.append(row)
                write()
                _log(f"s{seed} {method:9s} {_label(token):5s} ppl {row['ppl']:9.2f}  "
                     f"sparsity {row['achieved_sparsity']:.3f}  {row['prune_seconds']:6.1f} s "
                     f" peak +{row['peak_above_mb']:.0f} MB, load {_loadavg()[0]:.1f}")  # fmt: skip
    payload = write()
    print("\n" + quality_tables(payload["summary"], dense_row))
    curve = dense.info["curve"]
    print("\ndense training curve (step, seconds, train loss, test ppl on the first "
          f"{settings.eval_tokens} test tokens): "
          + "; ".join(f"{p['step']} {p['seconds']:.0f}s {p['train_loss']:.2f} {p['test_ppl']:.1f}"
                      for p in curve))  # fmt: skip
    print(f"\nwrote {out} ({payload['wall_seconds']:.0f} s)")
    return payload


def _protocol(args: argparse.Namespace, seqlen: int, test: torch.Tensor) -> dict[str, Any]:
    return {"seqlen": seqlen, "calib_samples": args.calib_samples,
            "eval_tokens": int(test.numel())}  # fmt: skip


# --------------------------------------------------------------------------- scale


GPT2_TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 256, "n_positions": 64}


def gpt2_small(blocks: int, seed: int, *, tiny: bool = False) -> tuple[torch.nn.Module, int]:
    """GPT-2 small (GPT2Config defaults), random init, Conv1D as nn.Linear, keeping only the
    first ``blocks`` blocks; the model and the full model's parameter count. ``tiny``: a
    2-block, 32-wide GPT-2 instead (the test's mode)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    from sfpk.models.hf import conv1d_to_linear_

    torch.manual_seed(seed)
    config = GPT2Config(**GPT2_TINY) if tiny else GPT2Config()
    full_layers = config.n_layer
    if blocks and blocks < full_layers:
        config.n_layer = blocks
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").float().eval()
    conv1d_to_linear_(model, Conv1D)
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    full = sum(p.numel() for p in model.parameters()) + (full_layers - config.n_layer) * block
    return model, full


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """The scale part: each method on a fresh GPT-2 small, seconds per block, peak memory."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs CUDA, and torch sees no GPU here")
    # Their import is part of the baseline, not of the pruning.
    from transformers import GPT2LMHeadModel  # noqa: F401
    from transformers.pytorch_utils import Conv1D  # noqa: F401

    base_rss = rss_bytes()
    out = Path(args.out)
    protocol = {"samples": args.samples, "seqlen": args.seqlen, "blocks": args.blocks,
                "device": str(device), "tiny": args.tiny}  # fmt: skip
    results: list[dict[str, Any]] = []
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("protocol") != protocol:
            raise SystemExit(f"error: --resume: {out} was measured with other settings")
        results = [r for r in previous["results"] if r["method"] not in args.methods]

    def write() -> dict[str, Any]:
        order = {m: i for i, m in enumerate((*SCALE_METHODS, *args.methods))}
        results.sort(key=lambda r: order.get(r["method"], len(order)))
        base = {r["method"]: r for r in results}
        for r in results:
            if "sparsegpt" in base:
                r["x_sparsegpt"] = r["seconds_per_block"] / base["sparsegpt"]["seconds_per_block"]
        payload = {
            "part": "scale", "sfpk": sfpk.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "device": str(device), "cpu_count": os.cpu_count(), "protocol": protocol,
            "model": f"GPT2LMHeadModel(GPT2Config({GPT2_TINY if args.tiny else ''})), random init",
            "tiny": args.tiny, "sparsity": 0.5, "results": results,
        }  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=_json) + "\n")
        return payload

    for method in args.methods:
        model, full_params = gpt2_small(args.blocks, seed=0, tiny=args.tiny)
        full_blocks = 2 if args.tiny else 12
        model.to(device)
        blocks = len(model.transformer.h)
        params = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(0)
        calibration = torch.randint(
            0, model.config.vocab_size, (args.samples, args.seqlen), generator=generator
        ).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak()
        before = rss_bytes()
        tic = time.perf_counter()
        result = prune_layerwise(
            model, calibration, method=method, sparsity=0.5, options=method_options(method, args),
            seed=0,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        peak = rss_bytes("VmHWM")
        per_block = statistics.fmean(result.block_seconds) if result.block_seconds else seconds
        entry = {
            "method": method, "blocks_run": blocks, "blocks_full": full_blocks,
            "extrapolated": blocks < full_blocks, "samples": args.samples,
            "seqlen": args.seqlen, "seconds": seconds,
            "block_seconds": list(result.block_seconds), "seconds_per_block": per_block,
            "full_seconds": seconds + (full_blocks - blocks) * per_block,
            "params_run": params, "params_full": full_params,
            "fp32_mb_run": 4 * params / 2**20, "fp32_mb_full": 4 * full_params / 2**20,
            "rss_before_mb": before / 2**20, "rss_at_import_mb": base_rss / 2**20,
            "peak_rss_mb": peak / 2**20, "reported_peak_rss_mb": result.peak_rss_mb,
            "peak_above_import_mb": (peak - base_rss) / 2**20,
            "achieved_sparsity": result.masks.sparsity(),
            "options": method_options(method, args), "commit": _commit(),
            "load_average": list(_loadavg()),
        }  # fmt: skip
        if device.type == "cuda":
            entry["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        _log(f"{method:9s} {blocks} blocks: {seconds:.1f} s ({per_block:.1f} s/block), "
             f"peak RSS {entry['peak_rss_mb']:.0f} MB (load {_loadavg()[0]:.1f})")  # fmt: skip
        results.append(entry)
        write()
        del model, calibration, result
    payload = write()
    print("\n" + scale_table(payload))
    print(f"\nwrote {out}")
    return payload


def scale_table(payload: dict[str, Any]) -> str:
    """Seconds per block, full-model seconds (extrapolated when marked *), peak RSS."""
    rs = payload["results"]
    first = rs[0]
    lines = [
        f"{'tiny GPT-2' if payload['tiny'] else 'GPT-2 small'}, 50 % unstructured, "
        f"{first['samples']} x {first['seqlen']} calibration "
        f"tokens, {payload['device']}, {payload['threads']} thread(s); {first['blocks_run']} "
        f"of {first['blocks_full']} blocks run (* = all-block seconds extrapolated from the "
        f"mean per block); fp32 "
        f"model {first['fp32_mb_full']:.0f} MB (as run {first['fp32_mb_run']:.0f} MB)",
        f"RSS after importing torch and transformers: {first['rss_at_import_mb']:.0f} MB",
        "| method | s / block | all blocks (s) | x sparsegpt (per block) | peak RSS (MB) | "
        "peak / fp32 | peak above import (MB) | above import / fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rs:
        star = "*" if r["extrapolated"] else ""
        ratio = f"{r['x_sparsegpt']:.2f}" if "x_sparsegpt" in r else ""
        lines.append(
            f"| {r['method']} | {r['seconds_per_block']:.1f} | {r['full_seconds']:.0f}{star} | "
            f"{ratio} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / r['fp32_mb_run']:.2f} | "
            f"{r['peak_above_import_mb']:.0f} | "
            f"{r['peak_above_import_mb'] / r['fp32_mb_run']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this platform
        return (math.nan, math.nan, math.nan)


def _commit() -> str:
    """The repository's HEAD commit (what code was measured), or ``unknown``."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The two sub-commands' flags; ``--quick`` and ``--tiny`` fill in smaller defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    quality = sub.add_parser("quality", help="perplexity table on the small Llama")
    quality.add_argument("--methods", type=_csv, default=None)
    quality.add_argument("--sparsities", type=_sparsities, default=None, help="0.5,...,2:4")
    quality.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=None)
    quality.add_argument("--calib-samples", type=int, default=None, help="default 128")
    quality.add_argument("--seqlen", type=int, default=None, help="default: the context")
    quality.add_argument("--eval-tokens", type=int, default=None, help="default 32768 (0: all)")
    quality.add_argument("--quick", action="store_true",
                         help="every method at 50 %% and 2:4, seed 0, 32 calibration windows, "
                              "16384 test tokens")  # fmt: skip
    quality.add_argument(
        "--tiny", action="store_true", help="a tiny dense model trained a few steps (the test)"
    )
    quality.add_argument("--train-steps", type=int, default=None)
    quality.add_argument("--cache", default=None, help="dense-model cache root")
    quality.add_argument(
        "--resume", action="store_true", help="keep the rows in --out, run only the missing ones"
    )
    quality.add_argument("--out", default=None)
    quality.add_argument(
        "--report-only", action="store_true", help="run nothing: merge --include, print, write"
    )
    quality.add_argument(
        "--include", type=_csv, default=[],
        help="JSON files of the same protocol whose rows are kept (and not run again)",
    )  # fmt: skip
    scale = sub.add_parser("scale", help="seconds and memory on GPT-2 small")
    scale.add_argument("--methods", type=_csv, default=list(SCALE_METHODS))
    scale.add_argument("--samples", type=int, default=128)
    scale.add_argument("--seqlen", type=int, default=512)
    scale.add_argument("--blocks", type=int, default=12, help="run the first K blocks only")
    scale.add_argument("--device", default="cpu")
    scale.add_argument("--tiny", action="store_true", help="a tiny GPT-2 (the test's mode)")
    scale.add_argument("--out", default=None)
    scale.add_argument(
        "--resume", action="store_true", help="keep --out's other methods, run only these"
    )
    for p in (quality, scale):
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.add_argument(
            "--options", type=json.loads, default={},
            help='per-method options, JSON: \'{"sfpk": {"num_particles": 4}}\'',
        )  # fmt: skip
    args = parser.parse_args(argv)
    if args.tiny and not args.options:  # the particle methods' default budget takes long
        args.options = {"sfpk": {"num_steps": 5, "num_particles": 2}, "spode": {"num_steps": 5}}
    if args.part == "quality":
        quick = args.quick or args.tiny
        args.methods = args.methods or list(METHODS)
        args.sparsities = args.sparsities or (["0.5", "2:4"] if quick else list(SPARSITIES))
        args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
        args.calib_samples = args.calib_samples or (8 if args.tiny else 32 if quick else 128)
        if args.eval_tokens is None:
            args.eval_tokens = 16_384 if quick else 32_768
        name = "llm_tiny.json" if args.tiny else "llm_quick.json" if args.quick else "llm.json"
    else:
        device = "" if args.device == "cpu" else "_" + args.device
        name = f"llm_scale{'_tiny' if args.tiny else ''}{device}.json"
    args.out = args.out or str(RESULTS / name)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the part the command line names."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run: Callable[[argparse.Namespace], dict[str, Any]] = (
        run_quality if args.part == "quality" else run_scale
    )
    return run(args)


if __name__ == "__main__":
    main()
