"""Tokenizers for the language-model data sets: UTF-8 bytes, or a Hugging Face tokenizer.

``load_tokenizer(spec)`` understands three kinds of ``spec`` (the ``tokenizer`` data option):

* ``"bytes"``: the built-in byte tokenizer, token id = UTF-8 byte, vocabulary 256. It needs
  no file and no dependency and every text round-trips.
* a path to a ``tokenizer.json`` file (read with ``tokenizers.Tokenizer.from_file``) or to a
  Hugging Face tokenizer folder (``transformers.AutoTokenizer.from_pretrained``, falling
  back to the folder's ``tokenizer.json`` without ``transformers``);
* a model id already in the local Hugging Face cache (what ``hf:<id>`` models use).

Nothing is ever downloaded: Hugging Face loads run with ``local_files_only=True``. Special
tokens (BOS/EOS) are not added; the text is encoded as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["BYTES", "Tokenizer", "load_tokenizer", "encode_bytes"]

BYTES = "bytes"


@dataclass(frozen=True)
class Tokenizer:
    """A text -> token ids function and the size of its vocabulary.

    Attributes:
        name: ``"bytes"``, or the path / id it was loaded from.
        vocab_size: every id is in ``[0, vocab_size)`` (added special tokens included).
        encode_fn: ``text -> ids``.
    """

    name: str
    vocab_size: int
    encode_fn: Callable[[str], Sequence[int] | Tensor]

    def encode(self, text: str) -> Tensor:
        """The token ids of ``text`` as a 1-D int64 tensor.

        Raises:
            DataError: the tokenizer produced an id outside its vocabulary.
        """
        ids = self.encode_fn(text)
        tokens = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise DataError(
                f"tokenizer {self.name!r} produced ids in [{int(tokens.min())}, "
                f"{int(tokens.max())}], outside its vocabulary of {self.vocab_size}"
            )
        return tokens


def encode_bytes(text: str) -> Tensor:
    """UTF-8 bytes of ``text`` as int64 token ids (the ``bytes`` tokenizer)."""
    data = bytearray(text.encode("utf-8"))
    if not data:
        return torch.empty(0, dtype=torch.int64)
    return torch.frombuffer(data, dtype=torch.uint8).to(torch.int64)


def _from_json_file(path: Path) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise DataError(
            f"tokenizer {str(path)!r}: reading tokenizer.json needs the tokenizers package "
            "(pip install tokenizers)"
        ) from None
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exception
        raise DataError(f"tokenizer {str(path)!r} cannot be read: {exc}") from None
    return Tokenizer(
        str(path),
        tok.get_vocab_size(with_added_tokens=True),
        lambda text: tok.encode(text, add_special_tokens=False).ids,
    )


def _from_pretrained(name: str) -> Tokenizer | None:
    """An AutoTokenizer from a local folder or the local cache; None without transformers."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        tok: Any = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"tokenizer {name!r} is neither a folder nor a tokenizer.json file, nor in the "
            f"local Hugging Face cache ({exc}); sfpk never downloads"
        ) from None

    def encode(text: str) -> list[int]:
        # verbose=False: a corpus is longer than the model's context; that is intended here.
        return tok(text, add_special_tokens=False, verbose=False)["input_ids"]

    return Tokenizer(name, len(tok), encode)


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """The tokenizer named by ``spec``: ``"bytes"``, a path, or a locally cached model id.

    Args:
        spec: see the module docstring.

    Returns:
        The tokenizer.

    Raises:
        DataError: a missing path, an unreadable file, a missing optional package, or an
            id that is not in the local cache.

    Example:
        >>> load_tokenizer("bytes").encode("hi").tolist()
        [104, 105]
    """
    name = str(spec)
    if name == BYTES:
        return Tokenizer(BYTES, 256, encode_bytes)
    path = Path(name).expanduser()
    if path.is_file():
        return _from_json_file(path)
    if path.is_dir():
        tokenizer = _from_pretrained(str(path))
        if tokenizer is not None:
            return tokenizer
        if (path / "tokenizer.json").is_file():
            return _from_json_file(path / "tokenizer.json")
        raise DataError(
            f"tokenizer folder {name!r} has no tokenizer.json; other formats need "
            "transformers (pip install transformers)"
        )
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".json")
    if not looks_like_path:
        tokenizer = _from_pretrained(name)  # a model id in the local Hugging Face cache
        if tokenizer is not None:
            return tokenizer
    raise DataError(
        f"tokenizer {name!r}: no such file or folder (give 'bytes', a tokenizer.json file or a "
        "Hugging Face tokenizer folder)"
    )
