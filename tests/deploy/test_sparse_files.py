"""Compressed weight files: bit-exact round trips, the per-tensor encoding choice, checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from sfpk.deploy.sparse_files import (
    choose_encoding,
    encode_tensor,
    read_weights_file,
    write_weights_file,
)
from sfpk.errors import CheckpointError, ConfigError

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that -0.0 and +0.0 compare different."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _pruned(shape: tuple[int, ...], density: float, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator).to(dtype)
    keep = torch.rand(shape, generator=generator) < density
    out = torch.where(keep, values, torch.zeros((), dtype=dtype))
    out.view(-1)[:3] = torch.tensor([-0.0, 0.0, -0.0], dtype=dtype)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_round_trip_is_bit_exact(tmp_path, dtype, density):
    """Every tensor comes back with the same bits (incl. -0.0), dtype and shape."""
    state = {
        "conv.weight": _pruned((16, 3, 3, 3), density, dtype),
        "fc.weight": _pruned((10, 33), density, dtype, seed=1),
        "fc.bias": torch.randn(10).to(dtype),
        "bn.num_batches_tracked": torch.tensor(7),
        "scalar": torch.tensor(-0.0, dtype=dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
    }
    path = write_weights_file(tmp_path / "m.safetensors", state, {}, sparse_names=set(state))
    back, _ = read_weights_file(path)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor), name
        assert torch.equal(_bits(back[name]), _bits(tensor)), name


def test_negative_zero_is_kept_as_a_value():
    """-0.0 has non-zero bits, so it is stored, not turned into +0.0."""
    encoding, parts = encode_tensor(torch.tensor([0.0] * 100 + [-0.0]))
    assert encoding == "indices"
    assert parts["indices"].tolist() == [100] and _bits(parts["values"]).any()


@pytest.mark.parametrize(
    ("numel", "kept", "itemsize", "expected"),
    [
        (1000, 1000, 4, "dense"),  # nothing pruned
        (1000, 980, 4, "dense"),  # 3920 + 125 > 4000
        (1000, 900, 4, "bits"),  # 3600 + 125 < 4000
        (1000, 100, 4, "bits"),  # 400 + 125 < 400 + 400
        (1000, 20, 4, "indices"),  # 80 + 80 < 80 + 125
        (3200, 100, 4, "bits"),  # a tie (400 + 400 both ways) goes to bits
        (3200, 99, 4, "indices"),  # 396 + 396 < 396 + 400
    ],
)
def test_encoding_is_the_smallest(numel, kept, itemsize, expected):
    """bits costs k*b + n/8, indices k*b + 4k, dense n*b; the smallest wins (ties: simpler)."""
    assert choose_encoding(numel, kept, itemsize) == expected


def test_pruned_tensors_are_stored_as_values_and_bits_or_indices(tmp_path):
    """The file holds name::values + name::bits|indices and the header says which."""
    state = {
        "a": _pruned((100, 100), 0.1, torch.float32),
        "b": _pruned((100, 100), 0.01, torch.float32),
        "c": torch.randn(5),
    }
    path = write_weights_file(tmp_path / "m.safetensors", state, {"x": 1}, sparse_names={"a", "b"})
    raw = load_file(path)
    assert set(raw) == {"a::values", "a::bits", "b::values", "b::indices", "c"}
    assert raw["a::bits"].numel() == math.ceil(10_000 / 8)
    _, header = read_weights_file(path)
    assert header["x"] == 1
    assert {n: e["encoding"] for n, e in header["encodings"].items()} == {
        "a": "bits",
        "b": "indices",
    }


def test_sparse_file_is_smaller_at_90_percent(tmp_path):
    """At 90 % removed the compressed float32 file is under a fifth of the dense one."""
    state = {"w": _pruned((256, 256), 0.1, torch.float32)}
    dense = write_weights_file(tmp_path / "d.safetensors", state, {})
    sparse = write_weights_file(tmp_path / "s.safetensors", state, {}, sparse_names={"w"})
    assert sparse.stat().st_size < 0.2 * dense.stat().st_size


def _rewrite(path, change):
    """Re-save a weights file after ``change(tensors, header)``."""
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sfpk"])
    change(tensors, header)
    save_file(tensors, str(path), metadata={"sfpk": json.dumps(header)})


CORRUPTIONS = {
    "value missing": lambda t, h: t.update({"w::values": t["w::values"][:-1]}),
    "part missing": lambda t, h: t.pop("w::bits"),
    "stray tensor": lambda t, h: t.update({"v::bits": torch.zeros(1, dtype=torch.uint8)}),
    "bad dtype": lambda t, h: h["encodings"]["w"].update(dtype="float99"),
    "bad encoding": lambda t, h: h["encodings"]["w"].update(encoding="zip"),
    "wrong format": lambda t, h: h.update(format="sfpk-masks"),
}


@pytest.mark.parametrize("change", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corrupted_file_is_a_checkpoint_error(tmp_path, change):
    """A file whose parts disagree with its header is refused with the file's name."""
    path = tmp_path / "m.safetensors"
    write_weights_file(path, {"w": _pruned((64, 64), 0.1, torch.float32)}, {}, sparse_names={"w"})
    _rewrite(path, change)
    with pytest.raises(CheckpointError, match="m.safetensors"):
        read_weights_file(path)


def test_bad_indices_are_refused(tmp_path):
    """Out-of-range or repeated positions would scatter wrongly; they are refused."""
    path = tmp_path / "m.safetensors"
    write_weights_file(path, {"w": _pruned((64, 64), 0.01, torch.float32)}, {}, sparse_names={"w"})
    _rewrite(path, lambda t, h: t["w::indices"].__setitem__(0, 10**6))
    with pytest.raises(CheckpointError, match="out of range"):
        read_weights_file(path)


def test_truncated_and_missing_files(tmp_path):
    """Garbage bytes and a missing path are CheckpointErrors, not safetensors exceptions."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights_file(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights_file(tmp_path / "none.safetensors")


def test_names_with_the_separator_are_refused(tmp_path):
    """'::' is the part separator; a state-dict name containing it would be ambiguous."""
    with pytest.raises(ConfigError, match="::"):
        write_weights_file(tmp_path / "m.safetensors", {"a::b": torch.zeros(1)}, {})
