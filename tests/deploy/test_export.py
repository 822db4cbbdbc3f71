"""Exported models: load_model rebuilds them alone, sparse files are exact, errors are clear."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sfpk
from conftest import TINY_FLAGS
from sfpk import models
from sfpk.cli import main
from sfpk.deploy.export import Architecture
from sfpk.deploy.onnx_export import onnx_session
from sfpk.errors import CheckpointError, ConfigError, DataError, MaskMismatchError
from sfpk.pipelines.run import export_run, run_architecture

DIGITS = Architecture("cnn_digits", num_classes=10, input_shape=(1, 8, 8), options={"width": 8})


def _pruned(architecture: Architecture, sparsity: float = 0.9, seed: int = 0):
    """A model of ``architecture`` with magnitude masks, BN statistics not at their init."""
    torch.manual_seed(seed)
    model = architecture.build()
    x = torch.randn(16, *architecture.input_shape)
    model.train()(x)  # move BatchNorm running statistics away from 0 / 1
    batch = (x, torch.zeros(16, dtype=torch.long))
    masks = sfpk.prune(model, [batch], method="mag", sparsity=sparsity)
    return model, masks, x


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_load_model_reproduces_the_masked_model(tmp_path, sparse):
    """export -> load_model gives the masked model's outputs (eval) with no other input."""
    model, masks, x = _pruned(DIGITS)
    sfpk.export(model, masks, tmp_path, architecture=DIGITS, sparse=sparse)
    masks.apply(model)
    loaded = sfpk.load_model(tmp_path)
    assert not loaded.training
    assert torch.equal(loaded(x), model.eval()(x))
    assert sfpk.load_masks(tmp_path / "masks.safetensors", loaded).sparsity() == masks.sparsity()


def test_dense_export_is_a_plain_state_dict(tmp_path):
    """Without --sparse the file loads into the plain architecture with strict=True."""
    model, masks, _ = _pruned(DIGITS)
    sfpk.export(model, masks, tmp_path, architecture=DIGITS)
    state = load_file(tmp_path / "model.safetensors")
    assert set(state) == set(model.state_dict())
    DIGITS.build().load_state_dict(state, strict=True)
    pruned = masks["features.0.weight"] == 0
    assert bool((state["features.0.weight"][pruned] == 0).all())


def test_export_leaves_the_model_unchanged(tmp_path):
    """Baking happens on a copy: the caller's weights keep their pruned values."""
    model, masks, _ = _pruned(DIGITS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sfpk.export(model, masks, tmp_path, architecture=DIGITS, sparse=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_sparse_and_dense_exports_hold_the_same_bits(tmp_path, dtype):
    """The compressed file restores every tensor of the dense export bit for bit."""
    model, masks, _ = _pruned(DIGITS)
    model.to(dtype)
    sfpk.export(model, masks, tmp_path / "d", architecture=DIGITS)
    sfpk.export(model, masks, tmp_path / "s", architecture=DIGITS, sparse=True)
    dense, sparse = sfpk.read_weights(tmp_path / "d"), sfpk.read_weights(tmp_path / "s")
    assert set(dense) == set(sparse)
    for name in dense:
        assert dense[name].dtype == sparse[name].dtype
        assert torch.equal(_bits(dense[name]), _bits(sparse[name])), name
    assert next(sfpk.load_model(tmp_path / "s").parameters()).dtype == dtype


def test_sparse_resnet20_file_is_smaller_at_90_percent(tmp_path):
    """The point of --sparse: at 90 % removed ResNet-20's file is well under half the dense."""
    arch = Architecture("resnet20", num_classes=10, input_shape=(3, 8, 8))
    model, masks, _ = _pruned(arch)
    dense = sfpk.export(model, masks, tmp_path / "d", architecture=arch)
    sparse = sfpk.export(model, masks, tmp_path / "s", architecture=arch, sparse=True)
    assert sparse.stat().st_size < 0.4 * dense.stat().st_size


# -- errors -----------------------------------------------------------------------------


def test_weights_only_file_names_load_weights(tmp_path):
    """architecture=None exports weights only; load_model says how to load them instead."""
    model, masks, _ = _pruned(DIGITS)
    sfpk.export(model, masks, tmp_path, architecture=None)
    with pytest.raises(CheckpointError, match=r"weights only.*sfpk\.models\.load_weights"):
        sfpk.load_model(tmp_path)
    loaded = models.load_weights(DIGITS.build(), tmp_path / "model.safetensors")
    masks.apply(model)
    assert torch.equal(loaded.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def _edit_header(path, change):
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sfpk"])
    change(header)
    save_file(tensors, str(path), metadata={"sfpk": json.dumps(header)})


def test_unknown_architecture_in_file(tmp_path):
    """A file naming a model this install lacks is refused with the name and choices."""
    model, masks, _ = _pruned(DIGITS)
    path = sfpk.export(model, masks, tmp_path, architecture=DIGITS)
    _edit_header(path, lambda h: h["architecture"].update(name="cnn_digitz"))
    with pytest.raises(CheckpointError, match="unknown model 'cnn_digitz'.*cnn_digits"):
        sfpk.load_model(path)


def test_weights_that_do_not_fit_the_recorded_architecture(tmp_path):
    """A header whose architecture disagrees with the tensors is a CheckpointError."""
    model, masks, _ = _pruned(DIGITS)
    path = sfpk.export(model, masks, tmp_path, architecture=DIGITS)
    _edit_header(path, lambda h: h["architecture"].update(num_classes=3))
    with pytest.raises(CheckpointError, match="do not fit architecture 'cnn_digits'"):
        sfpk.load_model(path)


def test_corrupted_file(tmp_path):
    """Truncated bytes are a CheckpointError naming the file."""
    model, masks, _ = _pruned(DIGITS)
    path = sfpk.export(model, masks, tmp_path, architecture=DIGITS, sparse=True)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read model file"):
        sfpk.load_model(path)


def test_masks_that_do_not_fit_the_model(tmp_path):
    """Masks of another model are refused before anything is written."""
    model, _, _ = _pruned(DIGITS)
    _, other_masks, _ = _pruned(Architecture("mlp", num_classes=10, input_shape=(64,)))
    with pytest.raises(MaskMismatchError):
        sfpk.export(model, other_masks, tmp_path / "out", architecture=DIGITS)
    assert not (tmp_path / "out").exists()


def test_architecture_that_does_not_fit_the_model(tmp_path):
    """A wrong architecture would write an unloadable file; it is refused up front."""
    model, masks, _ = _pruned(DIGITS)
    wrong = Architecture("cnn_digits", num_classes=10, input_shape=(1, 8, 8))  # width 32
    with pytest.raises(ConfigError, match="does not fit"):
        sfpk.export(model, masks, tmp_path / "out", architecture=wrong)


def test_export_options_object_writes_what_the_keywords_write(tmp_path):
    """ExportOptions and the keywords it groups are two spellings of one export."""
    model, masks, _ = _pruned(DIGITS)
    options = sfpk.ExportOptions(sparse=True)
    by_options = sfpk.export(model, masks, tmp_path / "a", architecture=DIGITS, options=options)
    by_keywords = sfpk.export(model, masks, tmp_path / "b", architecture=DIGITS, sparse=True)
    assert by_options.read_bytes() == by_keywords.read_bytes()


def test_export_options_refuses_unknown_or_doubled_options(tmp_path):
    """A misspelt option names the real ones; options and keywords together are ambiguous."""
    model, masks, _ = _pruned(DIGITS)
    with pytest.raises(ConfigError, match=r"unknown export option\(s\) \['sparce'\].*'sparse'"):
        sfpk.export(model, masks, tmp_path, architecture=DIGITS, sparce=True)
    with pytest.raises(ConfigError, match="either as options=ExportOptions"):
        sfpk.export(model, masks, tmp_path, architecture=DIGITS,
                    options=sfpk.ExportOptions(), slim=True)  # fmt: skip
    with pytest.raises(ConfigError, match="sparse=True stores safetensors"):
        sfpk.ExportOptions(sparse=True, format="onnx")
    assert not any(tmp_path.iterdir())


def test_export_never_overwrites_a_run_or_an_export(tmp_path):
    """Exporting into a run directory, or over an earlier export, needs care."""
    model, masks, _ = _pruned(DIGITS)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("pipeline: oneshot\n")
    with pytest.raises(ConfigError, match="run directory"):
        sfpk.export(model, masks, tmp_path / "run", architecture=DIGITS)
    sfpk.export(model, masks, tmp_path / "out", architecture=DIGITS)
    with pytest.raises(ConfigError, match="already exists"):
        sfpk.export(model, masks, tmp_path / "out", architecture=DIGITS)
    sfpk.export(model, masks, tmp_path / "out", architecture=DIGITS, overwrite=True)


# -- run directories and the CLI --------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny oneshot run (digits / mlp / mag 90 %)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["oneshot", *TINY_FLAGS, "--method", "mag", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_cli_export_of_a_run_rebuilds_its_model(run_dir, tmp_path, capsys):
    """`sfpk export RUN --out DIR --sparse` -> load_model gives the run's final model."""
    assert main(["export", str(run_dir), "--out", str(tmp_path), "--sparse"]) == 0
    assert "masks.safetensors" in capsys.readouterr().out
    loaded = sfpk.load_model(tmp_path)
    final = load_file(run_dir / "model.safetensors")
    state = loaded.state_dict()
    assert set(state) == set(final)
    assert all(torch.equal(state[k], v) for k, v in final.items())


@pytest.mark.slow
def test_run_export_records_the_run_architecture(run_dir, tmp_path):
    """The header holds the zoo name, options, classes and input shape of the run's model."""
    path = export_run(run_dir, tmp_path, num_classes=None)
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sfpk"])
    assert header["architecture"] == {
        "name": "mlp",
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "options": {"hidden": [32]},
    }
    assert header["method"] == "mag" and header["achieved_sparsity"] == pytest.approx(0.9, 1e-3)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no config.yaml"),
        (lambda d: (d.mkdir(), (d / "config.yaml").write_text("{}\n")), "no model.safetensors"),
    ],
    ids=["missing", "not a run", "unfinished"],
)
def test_cli_export_errors_are_one_line_exit_2(tmp_path, capsys, setup, match):
    """A missing, foreign or unfinished run directory: `sfpk: error: ...`, status 2."""
    run = tmp_path / "run"
    setup(run)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and match in err and err.count("\n") == 1


def test_on_disk_data_set_that_is_absent_needs_num_classes():
    """Counting classes loads the run's data set; where it is absent, --num-classes is named."""
    config = sfpk.build_config(
        "oneshot",
        overrides={"data.dataset": "cifar10", "data.data_dir": "/no/such/dir"},
        check_paths=False,
    )
    with pytest.raises(DataError, match="--num-classes"):
        run_architecture(config)
    arch = run_architecture(config, num_classes=10)
    assert arch == Architecture("resnet20", num_classes=10, input_shape=(3, 32, 32))


# -- slim, ONNX and 2:4 export options ----------------------------------------------------


def _filter_masks(model: torch.nn.Module, structure: str = "filter", seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    masks = sfpk.Masks.ones(model, structure=structure)
    return masks.with_tensors(
        {n: (torch.rand(t.shape, generator=generator) > 0.5).float() for n, t in masks.items()}
    )


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_slim_export_loads_with_load_model(tmp_path, sparse):
    """A slim file rebuilds from its header alone: smaller layers, the masked model's outputs."""
    pytest.importorskip("torch_pruning", reason="the slim extra is not installed")
    arch = Architecture("resnet20", num_classes=10, input_shape=(3, 32, 32))
    torch.manual_seed(0)
    model = arch.build().eval()
    masks = _filter_masks(model)
    path = sfpk.export(model, masks, tmp_path, architecture=arch, slim=True, sparse=sparse)
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["sfpk"])["slimmed"] is True
    loaded = sfpk.load_model(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), masks.apply(model)(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in loaded.parameters()) < 0.8 * models.count_parameters(model)
    assert loaded.layer1[0].conv1.out_channels < 16  # block-internal channels are gone


def test_slim_export_of_unstructured_masks_is_refused(tmp_path):
    """--slim needs whole filters or channels; the error names the structure and the choices."""
    model, masks, _ = _pruned(DIGITS)
    with pytest.raises(ConfigError, match=r"structure='unstructured'.*'filter' or 'channel'"):
        sfpk.export(model, masks, tmp_path, architecture=DIGITS, slim=True)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU exists")
def test_semi_structured_without_a_gpu_says_why(tmp_path):
    """2:4 conversion needs a CUDA GPU: on a CPU machine the error says so and writes nothing."""
    arch = Architecture("mlp", num_classes=10, input_shape=(1, 8, 8), options={"hidden": [32]})
    model = arch.build()
    masks = _filter_masks(model, structure="2:4")
    with pytest.raises(ConfigError, match="needs a CUDA GPU of compute capability 8.0"):
        sfpk.export(model, masks, tmp_path, architecture=arch, semi_structured=True)
    assert not (tmp_path / "model.safetensors").exists()


def test_semi_structured_needs_2_4_masks(tmp_path):
    """Filter masks are not 2:4: the error names both structures."""
    model, masks, _ = _pruned(DIGITS)
    with pytest.raises(ConfigError, match=r"structure='2:4'.*structure='unstructured'"):
        sfpk.export(model, masks, tmp_path, architecture=DIGITS, semi_structured=True)


@pytest.fixture(scope="module")
def filter_run_dir(tmp_path_factory):
    """A finished tiny oneshot run with filter masks (digits / mlp / mag 50 %)."""
    out = tmp_path_factory.mktemp("runs") / "filter-run"
    flags = [*TINY_FLAGS, "--method", "mag", "--structure", "filter", "--sparsity", "0.5"]
    assert main(["oneshot", *flags, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_cli_slim_and_onnx_export_of_a_structured_run(filter_run_dir, tmp_path, capsys):
    """`sfpk export RUN --slim` and `--slim --format onnx` give the run's masked outputs."""
    pytest.importorskip("torch_pruning", reason="the slim extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run = str(filter_run_dir)
    assert main(["export", run, "--out", str(tmp_path / "slim"), "--slim"]) == 0
    assert main(["export", run, "--out", str(tmp_path / "onnx"), "--slim", "--format", "onnx"]) == 0
    assert main(["export", run, "--out", str(tmp_path / "dense")]) == 0
    assert "model.onnx" in capsys.readouterr().out
    masked = sfpk.load_model(tmp_path / "dense")
    slim = sfpk.load_model(tmp_path / "slim")
    assert models.count_parameters(slim) < models.count_parameters(masked)
    x = torch.rand(6, 1, 8, 8)
    torch.testing.assert_close(slim(x), masked(x), atol=1e-5, rtol=1e-4)
    got = onnx_session(tmp_path / "onnx" / "model.onnx").run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), masked(x), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_cli_slim_of_an_unstructured_run_is_one_line_exit_2(run_dir, tmp_path, capsys):
    """`sfpk export RUN --slim` on unstructured masks: `sfpk: error: ...` naming the choices."""
    assert main(["export", str(run_dir), "--out", str(tmp_path), "--slim"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and "'filter' or 'channel'" in err
