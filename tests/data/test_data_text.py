"""Language-model data: text:<path>, the tokenizers, the block/split rule and tinytext."""

from __future__ import annotations

import collections
import math
import random

import pytest
import torch

from lm_helpers import write_tokenizer_json
from sfpk.data import dataset_argument, dataset_spec, load_dataset, load_tokenizer
from sfpk.data.text import TokenBlocks, split_blocks
from sfpk.data.tinytext import TINYTEXT_CHARS, generate_tinytext
from sfpk.errors import ConfigError, DataError

SENTENCES = [
    "the cat sat on the mat .",
    "the dog sat on the log .",
    "a cat and a dog ran to the mat .",
    "one two three four five six seven eight nine ten .",
]


@pytest.fixture
def corpus(tmp_path):
    """A 1000-byte ASCII text file."""
    text = ("".join(f"line {i}: the quick brown fox.\n" for i in range(60)))[:1000]
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def _all_items(dataset: TokenBlocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


# -- the block and split rule -------------------------------------------------------------


def test_split_rule_gives_the_documented_block_counts():
    """M = N // (T+1) blocks; val, test = max(1, floor(f * M)); train the rest."""
    assert split_blocks(1000, 9, (0.9, 0.05, 0.05)) == (90, 5, 5)
    assert split_blocks(1009, 9, (0.9, 0.05, 0.05)) == (90, 5, 5)  # 9 trailing tokens dropped
    assert split_blocks(2000, 9, (0.8, 0.1, 0.1)) == (160, 20, 20)
    assert split_blocks(30, 9, (0.9, 0.05, 0.05)) == (1, 1, 1)  # every split gets a block


def test_text_shorter_than_one_block_per_split_is_refused_clearly():
    """Two blocks cannot make three splits: the message names block_size and the fix."""
    with pytest.raises(DataError, match=r"block_size \+ 1 = 10 tokens.*smaller block_size"):
        split_blocks(29, 9, (0.9, 0.05, 0.05))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": 2.5}, "block_size"),
        ({"splits": [0.9, 0.1]}, "three positive fractions"),
        ({"splits": [0.9, 0.2, 0.1]}, "summing to 1"),
        ({"splits": [1.0, 0.0, 0.0]}, "positive"),
        ({"splits": "0.9"}, "three positive fractions"),
    ],
)
def test_bad_text_options_raise_config_errors(corpus, options, match):
    """Bad option values are named before any file is read."""
    with pytest.raises(ConfigError, match=match):
        load_dataset(f"text:{corpus}", **options)


# -- text:<path> --------------------------------------------------------------------------


def test_text_splits_are_contiguous_disjoint_spans_of_the_stream(corpus):
    """Train, val, test cover consecutive token positions and share none."""
    splits = load_dataset(f"text:{corpus}", block_size=9)
    parts = [splits.train, splits.val, splits.test]
    assert [len(p) for p in parts] == [90, 5, 5]
    positions = [set(p.positions()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(positions) for b in positions[i + 1 :])
    assert set().union(*positions) == set(range(1000))
    assert [p.positions().start for p in parts] == [0, 900, 950]


def test_text_items_are_next_token_pairs_of_the_bytes(corpus):
    """x = block[:-1], y = block[1:]: targets are inputs shifted by one token."""
    splits = load_dataset(f"text:{corpus}", block_size=9)
    data = corpus.read_bytes()
    x, y = splits.train[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (9,)
    assert bytes(x.tolist()) == data[10:19] and bytes(y.tolist()) == data[11:20]
    x, y = splits.test[-1]
    assert bytes(y.tolist()) == data[991:1000]
    assert (splits.task, splits.num_classes, splits.vocab_size) == ("language_model", 256, 256)
    assert splits.input_shape == (9,)


def test_text_loading_is_deterministic_whatever_the_seed(corpus):
    """The splits are a function of the text and the options only."""
    first = load_dataset(f"text:{corpus}", block_size=9, seed=0)
    second = load_dataset(f"text:{corpus}", block_size=9, seed=7)
    pairs = zip(
        [first.train, first.val, first.test], [second.train, second.val, second.test], strict=True
    )
    for a, b in pairs:
        assert torch.equal(a.tokens, b.tokens) and a.offset == b.offset


def test_text_folder_reads_its_txt_files_in_sorted_order(tmp_path):
    """b.txt after a.txt, other suffixes ignored: the stream is their concatenation."""
    (tmp_path / "b.txt").write_text("B" * 40)
    (tmp_path / "a.txt").write_text("A" * 40)
    (tmp_path / "notes.md").write_text("M" * 40)
    splits = load_dataset(f"text:{tmp_path}", block_size=3, splits=[0.5, 0.25, 0.25])
    stream = torch.cat([splits.train.tokens, splits.val.tokens, splits.test.tokens])
    assert bytes(stream.tolist()) == b"A" * 40 + b"B" * 40


def test_utf8_text_is_tokenized_as_bytes(tmp_path):
    """Non-ASCII characters become their UTF-8 bytes (é = 2 tokens), nothing is lost."""
    path = tmp_path / "accents.txt"
    path.write_text("café " * 20, encoding="utf-8")
    splits = load_dataset(f"text:{path}", block_size=9)
    stream = torch.cat([splits.train.tokens, splits.val.tokens, splits.test.tokens])
    assert len(stream) == 120  # 6 bytes per "café ", 12 whole blocks of 10
    assert bytes(stream.tolist()).decode("utf-8") == "café " * 20
    assert load_tokenizer("bytes").encode("é").tolist() == [0xC3, 0xA9]


def test_missing_text_path_is_a_data_error(tmp_path):
    """A wrong path names itself; nothing is downloaded or guessed."""
    with pytest.raises(DataError, match="nowhere.txt' does not exist"):
        load_dataset(f"text:{tmp_path / 'nowhere.txt'}")


def test_empty_text_file_is_a_data_error(tmp_path):
    """An empty corpus says so rather than failing inside the block arithmetic."""
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"text:{path}")


def test_text_shorter_than_one_block_is_a_data_error(tmp_path):
    """Ten bytes and block_size 128: the error says how many tokens were found and needed."""
    path = tmp_path / "short.txt"
    path.write_text("0123456789")
    with pytest.raises(DataError, match=r"10 tokens make 0 block\(s\).*129 tokens"):
        load_dataset(f"text:{path}")


def test_folder_without_txt_files_and_non_utf8_files_are_data_errors(tmp_path):
    """Both are layouts sfpk cannot read; each error names the path."""
    (tmp_path / "data.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"no \*\.txt"):
        load_dataset(f"text:{tmp_path}")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1") * 50)
    with pytest.raises(DataError, match="latin1.txt' is not UTF-8"):
        load_dataset(f"text:{tmp_path}")


def test_text_prefix_is_a_language_model_family_that_keeps_the_path_case(tmp_path):
    """text:<path> resolves to the text family; the path is not lower-cased."""
    assert dataset_spec("TEXT:/Some/Path.txt").task == "language_model"
    assert dataset_argument("text:/Some/Path.txt") == "/Some/Path.txt"
    assert dataset_argument("digits") is None
    with pytest.raises(ConfigError, match="give a path"):
        dataset_spec("text:")


def test_unknown_data_option_lists_the_accepted_ones(corpus):
    """An option typo names the options the data set has; classification ones have none."""
    with pytest.raises(ConfigError, match="blocksize.*block_size, tokenizer, splits"):
        load_dataset(f"text:{corpus}", blocksize=8)
    with pytest.raises(ConfigError, match="no options"):
        load_dataset("digits", block_size=8)


# -- Hugging Face tokenizers --------------------------------------------------------------


def test_tokenizer_json_file_sets_the_vocabulary_and_the_ids(tmp_path):
    """A tokenizers file gives word ids and its vocabulary becomes num_classes."""
    tokenizers = pytest.importorskip("tokenizers")
    write_tokenizer_json(tmp_path / "tokenizer.json", SENTENCES)
    reference = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = " ".join(SENTENCES * 10)
    path = tmp_path / "words.txt"
    path.write_text(text)
    splits = load_dataset(f"text:{path}", block_size=4, tokenizer=str(tmp_path / "tokenizer.json"))
    assert splits.num_classes == reference.get_vocab_size(with_added_tokens=True)
    stream = torch.cat([splits.train.tokens, splits.val.tokens, splits.test.tokens])
    ids = reference.encode(text).ids
    assert stream.tolist() == ids[: len(stream)] and len(ids) - len(stream) < 5


@pytest.mark.slow  # imports transformers (several seconds)
def test_tokenizer_folder_loads_with_auto_tokenizer_offline(tmp_path):
    """A Hugging Face tokenizer folder (what hf:<folder> models carry) loads without network."""
    pytest.importorskip("transformers")
    folder = tmp_path / "tok"
    folder.mkdir()
    write_tokenizer_json(folder / "tokenizer.json", SENTENCES)
    tokenizer = load_tokenizer(str(folder))
    assert (
        tokenizer.encode("the cat sat").tolist()
        == load_tokenizer(str(folder / "tokenizer.json")).encode("the cat sat").tolist()
    )
    assert tokenizer.vocab_size == 23


def test_missing_tokenizer_path_is_a_data_error(corpus, tmp_path):
    """A tokenizer path that does not exist is named; sfpk never tries to download it."""
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(f"text:{corpus}", tokenizer=str(tmp_path / "missing" / "tokenizer.json"))


# -- tinytext -----------------------------------------------------------------------------


def test_tinytext_is_generated_deterministically_without_touching_global_random():
    """The corpus is the same every time and leaves Python's random state alone."""
    state = random.getstate()
    generate_tinytext.cache_clear()
    first = generate_tinytext(5000)
    generate_tinytext.cache_clear()
    assert generate_tinytext(5000) == first and random.getstate() == state
    text = generate_tinytext()
    assert len(text) == TINYTEXT_CHARS and text.isascii()
    assert "plus" in text and "count from" in text


def test_tinytext_loads_as_a_byte_language_model_data_set():
    """Default tokenizer bytes (vocabulary 256), disjoint 90/5/5 spans of 300 000 bytes."""
    splits = load_dataset("tinytext", block_size=63)
    assert (splits.task, splits.num_classes, splits.input_shape) == ("language_model", 256, (63,))
    blocks = TINYTEXT_CHARS // 64
    assert [len(splits.train), len(splits.val), len(splits.test)] == [
        blocks - 2 * (blocks // 20),
        blocks // 20,
        blocks // 20,
    ]
    assert splits.val.positions().start == splits.train.positions().stop


def test_tinytext_is_predictable_far_below_uniform_perplexity():
    """Bigram statistics of train alone reach a val perplexity below 8 (uniform: 256)."""
    splits = load_dataset("tinytext", block_size=127)
    train, val = splits.train.tokens.tolist(), splits.val.tokens.tolist()
    pairs = collections.Counter(zip(train, train[1:], strict=False))
    firsts = collections.Counter(train[:-1])
    loss = 0.0
    for a, b in zip(val, val[1:], strict=False):  # add-one smoothing over 256 bytes
        loss -= math.log((pairs[a, b] + 1) / (firsts[a] + 256))
    assert math.exp(loss / (len(val) - 1)) < 8.0
