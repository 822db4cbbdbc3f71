"""The dense model of ``benchmarks/llm.py``: corpus, file split, tokenizer, training, cache.

The corpus is the Python standard library's own ``.py`` sources (``sysconfig``'s ``stdlib``
folder, ``site-packages`` excluded): real text that nobody in this project wrote, present on
every machine that runs the benchmark. Files are split *by file* with a hash of their path
relative to that folder, so no file's lines are in two splits: train (90 %), calibration
(5 %), test (5 %). A byte-level BPE tokenizer (the ``tokenizers`` package) is trained on the
train split; each split is tokenized file by file and concatenated with an end-of-text token
between files.

The model is a small ``LlamaForCausalLM`` trained from scratch with AdamW (warm-up, cosine
LR) on random windows of the train tokens. The trained model, the tokenizer, the token
tensors of the three splits and the training curve are cached under
``~/.cache/sfpk-bench/llm/<key>/`` (``$SFPK_BENCH_CACHE`` overrides the root), where ``key``
hashes every setting and the corpus's file list, so a re-run skips the training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class DenseSettings:
    """Everything that decides the dense model (and so its cache key)."""

    layers: int = 6
    hidden: int = 256
    heads: int = 4
    intermediate: int = 688
    context: int = 256
    vocab: int = 4096
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 0
    # The corpus: at most this many files per split (0: all), the tokenizer's training text.
    max_files: int = 0
    tokenizer_chars: int = 8_000_000
    eval_every: int = 50
    eval_tokens: int = 16_384


TINY = DenseSettings(
    layers=2, hidden=32, heads=2, intermediate=64, context=32, vocab=300, steps=4,
    batch_size=4, warmup=1, max_files=8, tokenizer_chars=100_000, eval_every=2,
    eval_tokens=2048,
)  # fmt: skip


def cache_root() -> Path:
    """``$SFPK_BENCH_CACHE`` or ``~/.cache/sfpk-bench``, then ``llm``."""
    root = os.environ.get("SFPK_BENCH_CACHE") or Path.home() / ".cache" / "sfpk-bench"
    return Path(root) / "llm"


def stdlib_files() -> tuple[Path, list[str]]:
    """The stdlib folder and its ``.py`` files' relative paths, sorted (no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts and p.is_file()
    )
    return root, paths


def split_of(relative: str) -> str:
    """``train`` / ``calibration`` / ``test`` from the first bytes of sha1(path): 90/5/5 %."""
    bucket = int.from_bytes(hashlib.sha1(relative.encode()).digest()[:4], "big") % 100
    return "train" if bucket < 90 else "calibration" if bucket < 95 else "test"


def read_splits(max_files: int = 0) -> dict[str, list[tuple[str, str]]]:
    """(relative path, text) of every readable UTF-8 file, per split, in path order.

    Files that are not valid UTF-8 (the stdlib's tests keep a few on purpose) are skipped.
    ``max_files`` > 0 keeps the first that many files of each split (the tiny mode).
    """
    root, paths = stdlib_files()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "calibration": [], "test": []}
    for relative in paths:
        split = splits[split_of(relative)]
        if max_files and len(split) >= max_files:
            continue
        try:
            text = (root / relative).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            split.append((relative, text))
    return splits


def train_tokenizer(texts: list[str], vocab: int, max_chars: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of ``vocab`` tokens (``EOT`` included),
    trained on the first ``max_chars`` characters of ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    chosen, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        chosen.append(text)
        total += len(text)
    tokenizer.train_from_iterator(chosen, trainer=trainer)
    return tokenizer


def encode(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """The texts tokenized one by one and concatenated, ``EOT`` after each: LongTensor [N]."""
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def build_model(settings: DenseSettings, vocab_size: int) -> torch.nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` of these settings (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=settings.hidden,
        intermediate_size=settings.intermediate, num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads, num_key_value_heads=settings.heads,
        max_position_embeddings=settings.context, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(config)


@torch.no_grad()
def window_nll(model: torch.nn.Module, tokens: torch.Tensor, seqlen: int, batch: int = 8) -> float:
    """Mean next-token NLL over floor(N / seqlen) non-overlapping windows (the training
    curve's own measure; the benchmark's table uses ``sfpk.llm.perplexity``)."""
    count = tokens.numel() // seqlen
    windows = tokens[: count * seqlen].view(count, seqlen)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for start in range(0, count, batch):
        ids = windows[start : start + batch]
        logits = model(input_ids=ids).logits[:, :-1]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        ).item()
        n += ids[:, 1:].numel()
    model.train(was_training)
    return total / n


def unigram_nll(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """NLL of ``test`` under the train tokens' add-one unigram: the floor a model must beat.

    Measured on the same predicted tokens as :func:`window_nll` would be is not needed: a
    unigram model's per-token NLL does not depend on the window cut.
    """
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[test].mean())


def train(
    model: torch.nn.Module,
    settings: DenseSettings,
    tokens: torch.Tensor,
    test: torch.Tensor,
    log: Callable[[str], None],
) -> list[dict[str, float]]:
    """AdamW on seeded random windows of ``tokens``; the curve of (step, seconds, train
    loss, test perplexity on the first ``eval_tokens`` test tokens)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": other, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.95),
    )  # fmt: skip

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return settings.lr * (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(settings.seed)
    held_out = test[: settings.eval_tokens]
    curve: list[dict[str, float]] = []
    start, running = time.perf_counter(), []
    model.train()
    for step in range(settings.steps):
        offsets = torch.randint(
            0, tokens.numel() - settings.context - 1, (settings.batch_size,), generator=generator
        )
        ids = torch.stack([tokens[o : o + settings.context] for o in offsets.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        last = step + 1 == settings.steps
        if (step + 1) % settings.eval_every == 0 or last:
            point = {
                "step": step + 1, "seconds": time.perf_counter() - start,
                "train_loss": sum(running) / len(running),
                "test_ppl": math.exp(window_nll(model, held_out, settings.context)),
            }  # fmt: skip
            running = []
            curve.append(point)
            log(f"  step {point['step']:5d}  {point['seconds']:7.0f} s  train loss "
                f"{point['train_loss']:.3f}  test ppl {point['test_ppl']:.2f}")  # fmt: skip
    model.eval()
    return curve


def settings_key(settings: DenseSettings) -> str:
    """A short hash of the settings, the Python version and the corpus's file list."""
    _, paths = stdlib_files()
    blob = json.dumps(
        {"settings": asdict(settings), "python": sys.version.split()[0],
         "files": hashlib.sha1("\n".join(paths).encode()).hexdigest()},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Dense:
    """A trained dense model and what the benchmark needs around it."""

    model: torch.nn.Module
    tokens: dict[str, torch.Tensor]  # train / calibration / test, LongTensor [N]
    info: dict[str, Any]  # settings, file and token counts, unigram, curve, timings
    folder: Path


def load_or_train(
    settings: DenseSettings, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> Dense:
    """The cached dense model of ``settings``, trained (and cached) first when absent."""
    from transformers import LlamaForCausalLM

    folder = (cache or cache_root()) / settings_key(settings)
    info_path = folder / "info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        tokens = torch.load(folder / "tokens.pt", weights_only=True)
        model = LlamaForCausalLM.from_pretrained(folder / "model").eval()
        log(f"dense model: cached in {folder}")
        return Dense(model, tokens, info, folder)
    log(f"dense model: training it into {folder} (nothing cached for these settings)")
    tic = time.perf_counter()
    splits = read_splits(settings.max_files)
    texts = {name: [text for _, text in files] for name, files in splits.items()}
    tokenizer = train_tokenizer(texts["train"], settings.vocab, settings.tokenizer_chars)
    tokens = {name: encode(tokenizer, split) for name, split in texts.items()}
    prepared = time.perf_counter() - tic
    vocab_size = tokenizer.get_vocab_size()
    counts = ", ".join(
        f"{k} {len(v)} files / {tokens[k].numel()} tokens" for k, v in splits.items()
    )
    log(f"  corpus: {counts}; tokenizer {vocab_size} tokens ({prepared:.0f} s)")
    model = build_model(settings, vocab_size)
    curve = train(model, settings, tokens["train"], tokens["test"], log)
    info = {
        "settings": asdict(settings), "key": folder.name, "python": sys.version.split()[0],
        "stdlib": sysconfig.get_paths()["stdlib"], "vocab_size": vocab_size,
        "files": {k: len(v) for k, v in splits.items()},
        "tokens": {k: int(v.numel()) for k, v in tokens.items()},
        "chars": {k: sum(len(t) for t in v) for k, v in texts.items()},
        "unigram_ppl": math.exp(unigram_nll(tokens["train"], tokens["test"], vocab_size)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prepare_seconds": prepared, "train_seconds": curve[-1]["seconds"],
        "threads": torch.get_num_threads(), "curve": curve,
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "model")
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.save(tokens, folder / "tokens.pt")
    info_path.write_text(json.dumps(info, indent=2) + "\n")  # last: marks the cache complete
    return Dense(model, tokens, info, folder)
