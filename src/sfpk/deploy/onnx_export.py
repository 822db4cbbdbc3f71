"""ONNX export with a check: the file is run in onnxruntime and must match torch.

Needs the optional extra ``sfpk[onnx]`` (``onnx`` and ``onnxruntime``); both are imported
only inside :func:`export_onnx`, so the rest of sfpk works without them.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, SfpkError

__all__ = ["ONNX_OPSET", "export_onnx", "onnx_session", "require_onnx"]

ONNX_OPSET = 17


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a ConfigError saying how to install them."""
    modules = []
    for name in ("onnx", "onnxruntime"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ConfigError(
                f"ONNX export needs {name}, which is not installed; pip install 'sfpk[onnx]'"
            ) from None
    return modules[0], modules[1]


def onnx_session(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` of the file ``path`` (``threads`` intra-op)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _trace_to_file(model: nn.Module, example_input: Tensor, file: Path) -> None:
    with warnings.catch_warnings():
        # torch's TorchScript exporter warns that it is deprecated; it needs no onnxscript
        # and handles every zoo model, so it is used on purpose (the warning is not news).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example_input,),
            str(file),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: Tensor,
    *,
    metadata: dict[str, Any] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Path:
    """Write ``model`` (eval mode, CPU) as an ONNX file and check onnxruntime against torch.

    The batch dimension is dynamic. ``metadata`` is stored as JSON under the ONNX model's
    metadata key ``"sfpk"``. ``model`` is not changed (a CPU copy is exported).

    Args:
        model: a module whose forward takes one tensor and returns one tensor.
        path: the ``.onnx`` file to write.
        example_input: a sample batch; onnxruntime's outputs on it must equal torch's.
        metadata: JSON-able facts to record in the file (e.g. the architecture).
        atol: absolute tolerance of the comparison.
        rtol: relative tolerance of the comparison.

    Returns:
        ``path``.

    Raises:
        ConfigError: the ``onnx`` extra is missing, or the model does not return a tensor.
        SfpkError: onnxruntime's outputs differ from torch's (the file is not kept).
    """
    onnx, _ = require_onnx()
    work = copy.deepcopy(model).to("cpu").eval()
    example_input = example_input.to("cpu")
    with torch.no_grad():
        expected = work(example_input)
    if not isinstance(expected, Tensor):
        raise ConfigError(
            f"ONNX export needs a model that returns one tensor; it returned "
            f"{type(expected).__name__}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        traced = Path(tmp) / "traced.onnx"
        _trace_to_file(work, example_input, traced)
        proto = onnx.load(str(traced))
        if metadata is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = "sfpk", json.dumps(metadata)
        onnx.checker.check_model(proto)
        staged = Path(tmp) / "model.onnx"
        onnx.save(proto, str(staged))
        got = onnx_session(staged).run(None, {"input": example_input.numpy()})[0]
        got = torch.from_numpy(got)
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=rtol):
            gap = (got - expected).abs().max().item() if got.shape == expected.shape else None
            raise SfpkError(
                f"onnxruntime's outputs differ from torch's (shape {tuple(got.shape)} vs "
                f"{tuple(expected.shape)}, largest difference {gap}, atol={atol}, rtol={rtol})"
            )
        os.replace(staged, path)
    return path
