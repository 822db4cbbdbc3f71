"""Checkpoints: derived seeds, RNG states, state-dict files and atomic checkpoint folders."""

from __future__ import annotations

import hashlib
import json
import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from helpers import conv_bn_net
from sfpk.errors import CheckpointError
from sfpk.masks.core import Masks
from sfpk.training import checkpoint as ckpt
from sfpk.training.checkpoint import (
    derive_seed,
    load_state_dict_file,
    read_latest_checkpoint,
    rng_state,
    save_state_dict,
    seed_everything,
    set_rng_state,
    write_checkpoint,
)


def _draws() -> tuple[float, float, torch.Tensor]:
    """One draw from each global generator that a run uses."""
    return random.random(), float(np.random.rand()), torch.rand(4)


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _model_and_masks() -> tuple[nn.Module, Masks]:
    model = conv_bn_net(seed=1)
    masks = Masks.ones(model)
    first = next(iter(masks))
    tensors = {n: m.clone() for n, m in masks.items()}
    tensors[first].view(-1)[::2] = 0.0  # a non-trivial pattern that must come back as is
    return model, masks.with_tensors(tensors, method="mag")


def _state(step: int) -> dict:
    """A ``state.pt``-like dict: nested containers, tensors, numbers, None and RNG states."""
    return {
        "format": 1,
        "progress": {
            "done": ["pretrain", "dense"],
            "current": {"key": "prune:0", "pruner": {"step": step, "score": torch.randn(5)}},
            "records": {"pretrain": [{"epoch": 0, "val_acc": 0.25, "test_acc": 1 / 3}]},
            "continue_from": None,
        },
        "rng": rng_state(),
    }


def _assert_same_nested(got, want) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
        assert torch.equal(got, want)
    elif isinstance(want, np.ndarray):
        assert np.array_equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _assert_same_nested(got[key], want[key])
    elif isinstance(want, list | tuple):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_same_nested(a, b)
    else:
        assert got == want and type(got) is type(want)


# -- seeds and RNG states -------------------------------------------------------------------
def test_derive_seed_is_stable_across_processes_and_versions():
    """Resuming a run started earlier needs the very same streams: the derivation is pinned."""
    assert derive_seed(0, "finetune", 3) == derive_seed(0, "finetune", 3)
    assert derive_seed(0, "finetune", 3) == 2820769920749049084  # sha256, not hash()


def test_derive_seed_differs_between_seeds_keys_and_their_order():
    """Every phase, round and epoch must get its own stream, or two of them would repeat."""
    seeds = {derive_seed(seed, key, epoch) for seed in (0, 1) for key in ("pretrain", "finetune")
             for epoch in range(50)}  # fmt: skip
    assert len(seeds) == 2 * 2 * 50
    assert derive_seed(0, "prune", 1) != derive_seed(0, 1, "prune")
    assert derive_seed(0) != derive_seed(0, "prune")


def test_derived_seeds_are_valid_for_every_generator():
    """A derived seed is a non-negative 63-bit int that torch and NumPy accept as is."""
    for epoch in range(200):
        seed = derive_seed(7, "tune:2", epoch)
        assert isinstance(seed, int) and 0 <= seed < 2**63
        torch.Generator().manual_seed(seed)
    assert derive_seed(7, "x").bit_length() > 32  # the full width is used, not a small range


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    """A run seeds every library it draws from, so a fresh start is reproducible."""
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    _assert_same_draws(_draws(), first)
    seed_everything(124)
    assert _draws()[0] != first[0]


def test_rng_state_round_trip_replays_the_same_draws():
    """A resumed process continues every random stream exactly where the checkpoint left it."""
    seed_everything(5)
    _draws()
    state = rng_state()
    expected = _draws()
    seed_everything(99)  # anything in between
    set_rng_state(state)
    _assert_same_draws(_draws(), expected)


# -- state-dict files -----------------------------------------------------------------------
def test_save_state_dict_keeps_buffers_and_tied_weights(tmp_path):
    """BatchNorm statistics are part of the model and shared weights must not break saving."""
    model = nn.Sequential(conv_bn_net(seed=2), nn.Linear(4, 4), nn.Linear(4, 4))
    model[2].weight = model[1].weight  # tied, as in language models
    model[0][1].running_mean.uniform_()
    path = save_state_dict(model, tmp_path / "sub" / "model.safetensors")
    loaded = load_state_dict_file(path)
    _assert_same_nested(loaded, {k: v.detach() for k, v in model.state_dict().items()})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no .tmp


def test_loading_a_missing_weights_file_is_a_checkpoint_error(tmp_path):
    """The CLI turns it into one line naming the file instead of a safetensors traceback."""
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_state_dict_file(tmp_path / "nothing.safetensors")
    assert "nothing.safetensors" in str(err.value)


def test_loading_a_corrupt_weights_file_is_a_checkpoint_error(tmp_path):
    """A truncated or foreign file is reported as unreadable, naming it."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read weights file .*model.safetensors"):
        load_state_dict_file(path)


# -- checkpoint folders ---------------------------------------------------------------------
def test_checkpoint_round_trips_model_masks_and_nested_state_exactly(tmp_path):
    """Bit-identical resume needs every tensor, RNG state and nested value back unchanged."""
    model, masks = _model_and_masks()
    state = _state(step=4)
    write_checkpoint(tmp_path, model=model, masks=masks, state=state)
    got = read_latest_checkpoint(tmp_path)
    _assert_same_nested(got.state, state)
    _assert_same_nested(got.model_state, dict(model.state_dict()))
    _assert_same_nested(dict(got.masks), dict(masks))
    assert (got.masks.structure, got.masks.method) == (masks.structure, masks.method)
    assert got.path == tmp_path / "ckpt-000000"


def test_checkpoint_without_masks_reads_back_none(tmp_path):
    """Dense phases have no masks; resuming them must not invent any."""
    model, _ = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=None, state={"step": 1})
    got = read_latest_checkpoint(tmp_path)
    assert got.masks is None and got.state == {"step": 1}
    assert not (got.path / "masks.safetensors").exists()


def test_the_last_two_checkpoints_are_kept_and_latest_names_the_newest(tmp_path):
    """Two checkpoints stay (disk use stays flat, one to fall back on); LATEST names the newest."""
    model, masks = _model_and_masks()
    for step in range(3):
        write_checkpoint(tmp_path, model=model, masks=masks, state={"step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000001", "ckpt-000002"]
    assert (tmp_path / "LATEST").read_text() == "ckpt-000002\n"
    assert read_latest_checkpoint(tmp_path).state == {"step": 2}


def test_every_checkpoint_file_has_its_sha256_recorded(tmp_path):
    """checksums.json lists each file of the folder with its digest, checked on reading."""
    model, masks = _model_and_masks()
    folder = write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    sums = json.loads((folder / "checksums.json").read_text())
    assert sorted(sums) == ["masks.safetensors", "model.safetensors", "state.pt"]
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("file", ["state.pt", "model.safetensors", "masks.safetensors"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, file, damage):
    """A damaged newest checkpoint is detected by its checksum; the previous one is read."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    newest = write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    path = newest / file
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="sfpk.training.checkpoint"):
        got = read_latest_checkpoint(tmp_path)
    assert got.state == {"step": 0} and got.path.name == "ckpt-000000"
    assert got.skipped == ["ckpt-000001"]
    assert "falling back" in caplog.text and "ckpt-000001" in caplog.text and file in caplog.text


def test_discarding_a_skipped_checkpoint_repoints_latest_and_keeps_it_aside(tmp_path):
    """After a fallback the corrupt folder is set aside and the next write follows the good one."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    newest = write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    (newest / "state.pt").write_bytes(b"torn")
    got = read_latest_checkpoint(tmp_path)
    ckpt.discard_skipped(tmp_path, got)
    assert (tmp_path / "LATEST").read_text() == "ckpt-000000\n"
    assert (tmp_path / "corrupt-ckpt-000001").is_dir()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 2})
    assert read_latest_checkpoint(tmp_path).state == {"step": 2}
    assert ckpt.checkpoint_names(tmp_path) == ["ckpt-000000", "ckpt-000001"]


def test_both_checkpoints_corrupt_is_an_error_naming_both(tmp_path):
    """With no sound checkpoint left, the error names each one and what is wrong with it."""
    model, masks = _model_and_masks()
    for step in range(2):
        folder = write_checkpoint(tmp_path, model=model, masks=masks, state={"step": step})
        (folder / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="ckpt-000001.*checksum.*ckpt-000000.*checksum"):
        read_latest_checkpoint(tmp_path)


def test_a_checkpoint_with_non_finite_weights_is_not_trusted(tmp_path, caplog):
    """NaN in a checkpoint's weights (checksum intact) makes the reader fall back too."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    with caplog.at_level(logging.WARNING, logger="sfpk.training.checkpoint"):
        assert read_latest_checkpoint(tmp_path).state == {"step": 0}
    assert "NaN or inf" in caplog.text


@pytest.mark.parametrize("stage", ["model", "masks", "state"])
def test_a_failure_mid_write_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch, stage):
    """A process dying while it writes must leave the old checkpoint, never a torn new one."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    target = {"model": (ckpt, "save_state_dict"), "masks": (Masks, "save"),
              "state": (torch, "save")}[stage]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(*target, fail)
        with pytest.raises(OSError, match="disk full"):
            write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    assert (tmp_path / "LATEST").read_text() == "ckpt-000000\n"
    assert not (tmp_path / "ckpt-000001").exists()  # only a hidden .tmp-000001 may be left
    assert read_latest_checkpoint(tmp_path).state == {"step": 0}
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})  # and it recovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000000", "ckpt-000001"]
    assert read_latest_checkpoint(tmp_path).state == {"step": 1}


def test_leftovers_of_a_killed_write_are_ignored_and_then_replaced(tmp_path):
    """A folder renamed into place but not yet named by LATEST is never read, then rewritten."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    (tmp_path / "ckpt-000001").mkdir()  # killed between the rename and the LATEST update
    (tmp_path / "ckpt-000001" / "state.pt").write_bytes(b"torn")
    (tmp_path / ".tmp-000001").mkdir()
    assert read_latest_checkpoint(tmp_path).state == {"step": 0}
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000000", "ckpt-000001"]
    assert read_latest_checkpoint(tmp_path).state == {"step": 1}


def test_a_run_without_a_checkpoint_reads_none(tmp_path):
    """A run killed before its first checkpoint restarts from scratch instead of failing."""
    assert read_latest_checkpoint(tmp_path / "checkpoints") is None
    assert read_latest_checkpoint(tmp_path) is None


def test_an_empty_latest_is_an_error_naming_the_checkpoints_that_exist(tmp_path):
    """An empty LATEST must not silently restart from scratch: it lists what is there."""
    (tmp_path / "LATEST").write_text("")
    with pytest.raises(CheckpointError, match="is empty; checkpoints in that folder: none"):
        read_latest_checkpoint(tmp_path)
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 1})
    (tmp_path / "LATEST").write_text("\n")
    with pytest.raises(CheckpointError, match="ckpt-000000, ckpt-000001"):
        read_latest_checkpoint(tmp_path)


def test_latest_naming_a_missing_folder_is_a_checkpoint_error(tmp_path):
    """A dangling LATEST is an error naming it and the checkpoints that do exist."""
    model, masks = _model_and_masks()
    write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    (tmp_path / "LATEST").write_text("ckpt-000007\n")
    with pytest.raises(CheckpointError, match="ckpt-000007.*does not exist.*: ckpt-000000"):
        read_latest_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("file", "message"),
    [("state.pt", "cannot read checkpoint"), ("model.safetensors", "cannot read weights file"),
     ("masks.safetensors", "cannot read mask file")],
)  # fmt: skip
def test_a_corrupt_checkpoint_file_is_a_checkpoint_error(tmp_path, file, message):
    """Each file of the only checkpoint is checked on reading; the message names the broken one."""
    model, masks = _model_and_masks()
    folder = write_checkpoint(tmp_path, model=model, masks=masks, state={"step": 0})
    (folder / file).write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{file} is missing or does not match") as err:
        read_latest_checkpoint(tmp_path)
    assert str(folder) in str(err.value)
    (folder / "checksums.json").unlink()  # a checkpoint of an older sfpk: each file's own check
    with pytest.raises(CheckpointError, match=message):
        read_latest_checkpoint(tmp_path)


def test_a_weights_file_with_nan_is_a_checkpoint_error(tmp_path):
    """Dense weights or best-epoch weights holding NaN are refused, naming the tensor."""
    model = conv_bn_net(seed=1)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    path = save_state_dict(model, tmp_path / "w.safetensors")
    name = next(iter(dict(model.named_parameters())))
    with pytest.raises(CheckpointError, match=f"NaN or inf in {name!r}"):
        load_state_dict_file(path)
