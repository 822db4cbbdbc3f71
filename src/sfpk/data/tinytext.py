"""``tinytext``: a small English-like corpus that sfpk generates, for offline LM demos and tests.

The text is not copied from anywhere: :func:`generate_tinytext` writes it from templates and a
small grammar with a fixed seed, so it carries no licence and is the same on every machine
and in every run. It mixes regularities of several kinds, which a small causal language
model learns quickly (byte-level perplexity far below the uniform 256):

* arithmetic facts: ``7 plus 5 is 12.``, ``9 minus 4 is 5.``, ``3 times 6 is 18.``;
* counting up and down: ``count from 4 to 9: 4 5 6 7 8 9.``;
* comparisons: ``12 is more than 7.``;
* fixed facts: ``an ant has 6 legs.``, ``the cow says moo.``, ``after monday comes tuesday.``;
* letter sequences: ``after c come d e f.``;
* sentences of a tiny grammar with number agreement: ``the small cats see a red ball.``

Sentences are grouped into paragraphs of three to six, separated by blank lines.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from .base import DataSplits
from .registry import register_dataset
from .text import DEFAULT_BLOCK_SIZE, DEFAULT_SPLITS, token_splits
from .tokenizer import BYTES, load_tokenizer

__all__ = ["TINYTEXT_SEED", "TINYTEXT_CHARS", "generate_tinytext", "load_tinytext"]

TINYTEXT_SEED = 1234
TINYTEXT_CHARS = 300_000

_LEGS = {"cat": 4, "dog": 4, "horse": 4, "bird": 2, "duck": 2, "ant": 6, "spider": 8, "fish": 0}
_SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa"}
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NOUNS = ["cat", "dog", "bird", "fox", "child", "teacher", "robot", "farmer"]
_PLURALS = {"child": "children", "fox": "foxes"}
_THINGS = ["ball", "tree", "house", "river", "book", "box", "hill", "garden"]
_ADJECTIVES = ["small", "big", "red", "old", "happy", "quiet", "green", "fast"]
_VERBS = ["see", "like", "find", "watch", "follow", "draw"]
_PLACES = ["near the river", "in the garden", "on the hill", "at home", "by the old tree"]


def _plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    kind = rng.choice(("plus", "minus", "times"))
    if kind == "plus":
        return f"{a} plus {b} is {a + b}."
    if kind == "minus":
        a, b = max(a, b), min(a, b)
        return f"{a} minus {b} is {a - b}."
    return f"{a} times {b} is {a * b}."


def _counting(rng: random.Random) -> str:
    start = rng.randint(0, 20)
    end = start + rng.randint(2, 8)
    numbers = list(range(start, end + 1))
    if rng.random() < 0.5:
        return f"count from {start} to {end}: {' '.join(map(str, numbers))}."
    return f"count down from {end} to {start}: {' '.join(map(str, reversed(numbers)))}."


def _comparison(rng: random.Random) -> str:
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    if a == b:
        return f"{a} equals {b}."
    return f"{a} is {'more' if a > b else 'less'} than {b}."


def _fact(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        animal = rng.choice(sorted(_LEGS))
        article = "an" if animal[0] in "aeiou" else "a"
        return f"{article} {animal} has {_LEGS[animal]} legs."
    if kind == 1:
        animal = rng.choice(sorted(_SOUNDS))
        return f"the {animal} says {_SOUNDS[animal]}."
    day = rng.randrange(len(_DAYS))
    return f"after {_DAYS[day]} comes {_DAYS[(day + 1) % len(_DAYS)]}."


def _letters(rng: random.Random) -> str:
    first = rng.randrange(22)
    following = " ".join(chr(ord("a") + first + i) for i in range(1, 4))
    return f"after {chr(ord('a') + first)} come {following}."


def _grammar(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    plural = rng.random() < 0.4
    subject = _plural(noun) if plural else noun
    adjective = f"{rng.choice(_ADJECTIVES)} " if rng.random() < 0.5 else ""
    verb = rng.choice(_VERBS)
    verb = verb if plural else verb + ("es" if verb.endswith("ch") else "s")
    thing = rng.choice(_THINGS)
    article = rng.choice(("a", "the"))
    place = f" {rng.choice(_PLACES)}" if rng.random() < 0.4 else ""
    return f"the {adjective}{subject} {verb} {article} {thing}{place}."


_KINDS: Sequence[tuple[Callable[[random.Random], str], float]] = (
    (_arithmetic, 3.0),
    (_counting, 1.5),
    (_comparison, 1.5),
    (_fact, 2.0),
    (_letters, 1.0),
    (_grammar, 3.0),
)


@functools.lru_cache(maxsize=4)
def generate_tinytext(num_chars: int = TINYTEXT_CHARS, seed: int = TINYTEXT_SEED) -> str:
    """The ``tinytext`` corpus: exactly ``num_chars`` ASCII characters (module docstring).

    Deterministic: the same arguments give the same text on every machine (Python's
    ``random.Random`` with a fixed seed; the global random state is not touched).

    Example:
        >>> len(generate_tinytext(1000))
        1000
    """
    rng = random.Random(seed)
    makers, weights = zip(*_KINDS, strict=True)
    paragraphs: list[str] = []
    size = 0
    while size < num_chars:
        count = rng.randint(3, 6)
        sentences = [rng.choices(makers, weights)[0](rng) for _ in range(count)]
        paragraph = " ".join(sentences) + "\n\n"
        paragraphs.append(paragraph)
        size += len(paragraph)
    return "".join(paragraphs)[:num_chars]


@register_dataset(
    "tinytext", input_shape=(DEFAULT_BLOCK_SIZE,), on_disk=False, task="language_model"
)
def load_tinytext(
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    tokenizer: str = BYTES,
    splits: Sequence[float] = DEFAULT_SPLITS,
    num_chars: int = TINYTEXT_CHARS,
) -> DataSplits:
    """The generated ``tinytext`` corpus as a language-model data set (no download, no licence).

    The text comes from :func:`generate_tinytext` (fixed seed, independent of ``seed``); it is
    tokenized and split like ``text:<path>`` (:mod:`sfpk.data.text`: contiguous
    train / val / test spans of blocks of ``block_size + 1`` tokens).

    Args:
        seed: Ignored (the corpus and its splits are fixed).
        val_fraction: Ignored; ``splits`` sets the three fractions.
        augment: Ignored.
        block_size: tokens per input sequence (data option).
        tokenizer: ``"bytes"`` (default; vocabulary 256) or a Hugging Face tokenizer path.
        splits: ``(train, val, test)`` fractions of the token stream (data option).
        num_chars: length of the generated text (data option; default 300 000, ~300 KB).

    Returns:
        The splits, ``task="language_model"``, ``num_classes`` = vocabulary size.

    Raises:
        ConfigError: bad ``block_size``, ``splits`` or ``num_chars``.
        DataError: too little text for one block per split.
    """
    del seed, val_fraction, augment
    if isinstance(num_chars, bool) or not isinstance(num_chars, int) or num_chars < 1:
        raise ConfigError(f"num_chars={num_chars!r} must be an integer >= 1")
    tok = load_tokenizer(tokenizer)
    tokens = tok.encode(generate_tinytext(num_chars))
    return token_splits(
        "tinytext", tokens, vocab_size=tok.vocab_size, block_size=block_size, splits=splits
    )
