"""Language-model data sets: local text cut into fixed-length blocks of next-token pairs.

``--data text:<file or folder>`` reads a UTF-8 text file, or every ``*.txt`` file directly in
a folder (sorted by name; each file is tokenized on its own and the token ids are
concatenated in that order). The token stream is split and cut as follows (docs/data.md):

* ``L = block_size + 1``; the stream holds ``M = N // L`` whole blocks, the trailing
  ``N mod L`` tokens are dropped;
* with ``splits = (f_train, f_val, f_test)``, validation gets
  ``max(1, floor(f_val * M))`` blocks, test ``max(1, floor(f_test * M))`` and training the
  rest (at least one); training is the first span of the stream, validation the next one,
  test the last one. Contiguous spans keep the splits disjoint: no block, and no token
  position, belongs to two splits;
* block ``k`` of a split is ``L`` consecutive tokens; its item is ``(x, y) = (block[:-1],
  block[1:])``, two int64 tensors of ``block_size`` tokens (``y`` is the next-token shift).

The result is a function of the text and the options alone (``seed`` and ``val_fraction``
are not used; ``splits`` sets all three fractions). ``num_classes`` of the splits is the
vocabulary size, which the pipelines pass to the model (:mod:`sfpk.pipelines.context`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import DataSplits
from .registry import register_dataset_prefix
from .tokenizer import BYTES, Tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SPLITS",
    "TokenBlocks",
    "read_texts",
    "encode_texts",
    "split_blocks",
    "token_splits",
    "load_text",
]

DEFAULT_BLOCK_SIZE = 128
DEFAULT_SPLITS = (0.9, 0.05, 0.05)


class TokenBlocks(Dataset):
    """Items ``(block[:-1], block[1:])`` over consecutive blocks of ``block_size + 1`` tokens.

    Args:
        tokens: this split's span of the token stream; its length is a multiple of
            ``block_size + 1``.
        block_size: tokens per input (and per target) sequence.
        offset: position of ``tokens[0]`` in the whole stream (for :meth:`positions`).
    """

    def __init__(self, tokens: Tensor, block_size: int, offset: int = 0) -> None:
        if tokens.dim() != 1 or len(tokens) % (block_size + 1):
            raise DataError(
                f"a token span of shape {tuple(tokens.shape)} is not whole blocks of "
                f"{block_size + 1} tokens"
            )
        self.tokens = tokens.to(torch.int64)
        self.block_size = block_size
        self.offset = offset

    def __len__(self) -> int:
        return len(self.tokens) // (self.block_size + 1)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        index %= len(self)
        length = self.block_size + 1
        block = self.tokens[index * length : (index + 1) * length]
        return block[:-1], block[1:]

    def take(self, index: Tensor) -> list[Tensor]:
        """The collated batch of blocks ``index``, by one slice (``sfpk.index_batches``)."""
        blocks = self.tokens.view(len(self), self.block_size + 1)[index]
        return [blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()]

    def positions(self) -> range:
        """The positions of the token stream this split covers (inputs and targets)."""
        return range(self.offset, self.offset + len(self.tokens))


def _check_options(block_size: int, splits: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size={block_size!r} must be an integer >= 1")
    try:
        fractions = tuple(float(f) for f in splits)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"splits={splits!r} must be three positive fractions (train, val, test) "
            "summing to 1, e.g. [0.9, 0.05, 0.05]"
        )
    train, val, test = fractions
    return train, val, test


def split_blocks(num_tokens: int, block_size: int, splits: Sequence[float]) -> tuple[int, ...]:
    """Blocks per split ``(train, val, test)`` for a stream of ``num_tokens`` (module rule).

    Raises:
        ConfigError: bad ``block_size`` or ``splits``.
        DataError: fewer than three whole blocks (one per split).
    """
    _, f_val, f_test = _check_options(block_size, splits)
    total = num_tokens // (block_size + 1)
    # 1e-9: floor(0.05 * 100) must be 5, not 4, despite 0.05 * 100 = 5.000000000000001 or
    # 0.29 * 100 = 28.999999999999996.
    val = max(1, math.floor(f_val * total + 1e-9))
    test = max(1, math.floor(f_test * total + 1e-9))
    train = total - val - test
    if train < 1:
        raise DataError(
            f"{num_tokens} tokens make {total} block(s) of block_size + 1 = {block_size + 1} "
            f"tokens; at least {val + test + 1} are needed (train, val and test need one "
            "each): give more text or a smaller block_size"
        )
    return train, val, test


def token_splits(
    name: str,
    tokens: Tensor,
    *,
    vocab_size: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    splits: Sequence[float] = DEFAULT_SPLITS,
) -> DataSplits:
    """Cut a token stream into train / val / test :class:`TokenBlocks` (module rule).

    Args:
        name: the data set name for ``DataSplits.name``.
        tokens: 1-D integer token ids.
        vocab_size: the tokenizer's vocabulary size (``num_classes`` of the result).
        block_size: tokens per input sequence.
        splits: fractions ``(train, val, test)``, positive, summing to 1.

    Returns:
        The splits, ``task="language_model"``, ``input_shape=(block_size,)``.

    Raises:
        ConfigError: bad ``block_size`` or ``splits``.
        DataError: no tokens, or too few for one block per split.
    """
    if len(tokens) == 0:
        raise DataError(f"{name}: the text is empty (no tokens)")
    try:
        counts = split_blocks(len(tokens), block_size, splits)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None
    length = block_size + 1
    parts, start = [], 0
    for count in counts:
        parts.append(TokenBlocks(tokens[start : start + count * length], block_size, start))
        start += count * length
    train, val, test = parts
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=vocab_size,
        input_shape=(block_size,),
        task="language_model",
    )


def read_texts(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(file, text)`` of a text file, or of every ``*.txt`` directly in a folder (sorted).

    Raises:
        DataError: the path does not exist, a folder holds no ``*.txt`` file, or a file is
            not UTF-8.
    """
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"text: folder {str(root)!r} holds no *.txt file")
    else:
        raise DataError(f"text: {str(root)!r} does not exist (give a text file or a folder)")
    texts = []
    for file in files:
        try:
            texts.append((file, file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise DataError(f"text: {str(file)!r} is not UTF-8 text ({exc})") from None
    return texts


def encode_texts(texts: Sequence[tuple[Path, str]], tokenizer: Tokenizer) -> Tensor:
    """Each text tokenized on its own, the ids concatenated in order."""
    pieces = [tokenizer.encode(text) for _, text in texts]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)


@register_dataset_prefix("text", input_shape=(DEFAULT_BLOCK_SIZE,), task="language_model")
def load_text(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    tokenizer: str = BYTES,
    splits: Sequence[float] = DEFAULT_SPLITS,
) -> DataSplits:
    """Local UTF-8 text as a language-model data set (``--data text:<file or folder>``).

    Args:
        path: a text file, or a folder whose ``*.txt`` files are read in sorted order.
        seed: Ignored (the splits are contiguous spans, not a seeded draw).
        val_fraction: Ignored; ``splits`` sets the three fractions.
        augment: Ignored.
        block_size: tokens per input sequence (data option).
        tokenizer: ``"bytes"``, a ``tokenizer.json`` file, a Hugging Face tokenizer folder
            or a locally cached model id (data option; :mod:`sfpk.data.tokenizer`). The
            pipelines default it to the model's folder for ``hf:<folder>`` models.
        splits: ``(train, val, test)`` fractions of the token stream (data option).

    Returns:
        The splits; ``num_classes`` is the vocabulary size.

    Raises:
        DataError: a missing path, a folder without ``*.txt``, text that is not UTF-8, is
            empty or is too short for one block per split, or a tokenizer that cannot load.
        ConfigError: a bad ``block_size`` or ``splits``.

    Example:
        >>> splits = load_dataset("text:corpus.txt", block_size=64)  # doctest: +SKIP
        >>> x, y = splits.train[0]  # x[1:] == y[:-1]  # doctest: +SKIP
    """
    del seed, val_fraction, augment
    _check_options(block_size, splits)
    texts = read_texts(path)
    tok = load_tokenizer(tokenizer)
    tokens = encode_texts(texts, tok)
    if len(tokens) == 0:
        raise DataError(f"text: {str(path)!r} is empty")
    return token_splits(
        f"text:{path}", tokens, vocab_size=tok.vocab_size, block_size=block_size, splits=splits
    )
