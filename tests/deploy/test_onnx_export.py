"""ONNX export: onnxruntime computes what torch computes, for masked and slim models."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import sfpk
from sfpk.deploy.export import Architecture
from sfpk.deploy.onnx_export import export_onnx, onnx_session
from sfpk.errors import ConfigError
from sfpk.masks.core import Masks

onnx = pytest.importorskip("onnx", reason="the onnx extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

RESNET = Architecture("resnet20", num_classes=10, input_shape=(3, 32, 32))
DIGITS = Architecture("cnn_digits", num_classes=10, input_shape=(1, 8, 8), options={"width": 8})


def _filter_masks(model: torch.nn.Module, seed: int = 0) -> Masks:
    generator = torch.Generator().manual_seed(seed)
    masks = Masks.ones(model, structure="filter")
    return masks.with_tensors(
        {n: (torch.rand(t.shape, generator=generator) > 0.5).float() for n, t in masks.items()}
    )


def _run(path, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(onnx_session(path).run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("slim", [False, True], ids=["masked", "slim"])
def test_onnx_export_equals_torch(tmp_path, slim):
    """The file's outputs, on a batch size other than the traced one, equal the masked model's."""
    pytest.importorskip("torch_pruning", reason="the slim extra is not installed")
    torch.manual_seed(0)
    model = RESNET.build().eval()
    masks = _filter_masks(model)
    path = sfpk.export(model, masks, tmp_path, architecture=RESNET, slim=slim, format="onnx")
    assert path.name == "model.onnx" and (tmp_path / "masks.safetensors").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    x = torch.randn(5, 3, 32, 32)
    expected = masks.apply(model)(x)
    torch.testing.assert_close(_run(path, x), expected, atol=1e-4, rtol=1e-3)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    header = json.loads(metadata["sfpk"])
    assert header["architecture"]["name"] == "resnet20" and header.get("slimmed", False) == slim


def test_slim_onnx_file_is_smaller(tmp_path):
    """Slimming removes the weights from the ONNX graph, not just zeroes them."""
    pytest.importorskip("torch_pruning", reason="the slim extra is not installed")
    model = DIGITS.build().eval()
    masks = _filter_masks(model)
    dense = sfpk.export(model, masks, tmp_path / "d", architecture=DIGITS, format="onnx")
    slim = sfpk.export(model, masks, tmp_path / "s", architecture=DIGITS, format="onnx", slim=True)
    assert slim.stat().st_size < 0.8 * dense.stat().st_size


def test_mismatch_between_onnxruntime_and_torch_is_an_error(tmp_path):
    """The check is real: a model whose trace computes something else is refused, no file."""

    class Drifting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the traced graph loses the +1 that torch's own forward adds
            return self.linear(x) + (0.0 if torch.onnx.is_in_onnx_export() else 1.0)

    with pytest.raises(sfpk.SfpkError, match="onnxruntime's outputs differ"):
        export_onnx(Drifting(), tmp_path / "m.onnx", torch.randn(3, 4))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_extra_is_named(tmp_path, monkeypatch, missing):
    """Without the extra, the error names the package and `pip install 'sfpk[onnx]'`."""
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    model = DIGITS.build()
    with pytest.raises(ConfigError, match=rf"needs {missing},.*sfpk\[onnx\]"):
        sfpk.export(model, None, tmp_path, architecture=DIGITS, format="onnx")


def test_sparse_onnx_is_refused(tmp_path):
    """--sparse is a safetensors storage; asking for it with ONNX is an error, not ignored."""
    model = DIGITS.build()
    with pytest.raises(ConfigError, match="format='onnx'"):
        sfpk.export(model, None, tmp_path, architecture=DIGITS, format="onnx", sparse=True)


def test_unknown_format_lists_the_choices(tmp_path):
    """A misspelt format names the allowed ones."""
    with pytest.raises(ConfigError, match="onnx, safetensors"):
        sfpk.export(DIGITS.build(), None, tmp_path, architecture=DIGITS, format="onx")
