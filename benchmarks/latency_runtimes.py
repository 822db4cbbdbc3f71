"""The CPU runtimes of ``benchmarks/latency.py``: one runner per runtime, dense and slim alike.

A runner is a no-argument callable that runs one forward pass on a fixed input. Each one
is checked against eager torch (:func:`runners`) before it is timed.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config
from torch import nn

from sfpk.deploy.inference import fold_batchnorm
from sfpk.deploy.onnx_export import onnx_session, require_onnx


def _torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def _folded_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Eager torch on :func:`sfpk.deploy.inference.fold_batchnorm`'s copy (no BatchNorm passes)."""
    return _torch_runner(fold_batchnorm(model, x[:2]), x)


def _torchscript_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Traced, frozen (BatchNorm folded) and ``optimize_for_inference``-d TorchScript.

    On CPU, ``optimize_for_inference`` also moves the convs to oneDNN's blocked layout and
    fuses conv + ReLU.
    """
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile (the `inductor` runtime); it is
        # measured on purpose, as the older deployment path, so the warning is not news.
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen = torch.jit.freeze(torch.jit.trace(model, x))
        frozen = torch.jit.optimize_for_inference(frozen)

    def run() -> object:
        with torch.no_grad():
            return frozen(x)

    return run


def _inductor_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """``torch.compile`` (inductor, static shapes) with freezing: weights become constants,
    BatchNorm is folded, convs use prepacked oneDNN weights with ReLU / add fused in, and the
    remaining elementwise work is generated C++ (needs a C++ compiler)."""
    torch._inductor.config.freezing = True
    compiled = torch.compile(model, dynamic=False, fullgraph=True)

    def run() -> object:
        with torch.no_grad():
            return compiled(x)

    return run


def _onnx_runner(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    session = onnx_session(path, threads=threads)
    level = session.get_session_options().graph_optimization_level
    if level.name != "ORT_ENABLE_ALL":  # Conv+BN(+ReLU, +Add) fusion and NCHWc layouts
        raise RuntimeError(f"onnxruntime session at {level.name}, expected ORT_ENABLE_ALL")
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)[0]


def ort_layout(path: Path) -> dict[str, int]:
    """Node counts of onnxruntime's optimised graph of ``path`` (ORT_ENABLE_ALL, this CPU).

    ``reorders``: layout conversions between NCHW and the blocked NCHWc layout (ORT's
    ``ReorderInput`` / ``ReorderOutput``, a pass over the tensor each); ``plain_convs``: convs
    left in NCHW (not converted to NCHWc, whose kernels need channel counts that are
    multiples of the SIMD block, 16 floats with AVX-512, 8 with AVX2).
    """
    onnx, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # ORT warns that the saved graph is CPU-specific
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    return {
        "reorders": sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in nodes),
        "plain_convs": sum(
            n.op_type in ("Conv", "FusedConv") and n.domain != "com.microsoft.nchwc" for n in nodes
        ),
    }


TORCH_RUNTIMES: dict[str, Callable[[nn.Module, torch.Tensor], Callable[[], object]]] = {
    "torch": _torch_runner,
    "torch-folded": _folded_runner,
    "torchscript": _torchscript_runner,
    "inductor": _inductor_runner,
}
RUNTIMES = [*TORCH_RUNTIMES, "onnxruntime"]


def runners(
    runtime: str,
    models: dict[str, nn.Module],
    files: dict[str, Path],
    x: torch.Tensor,
    threads: int,
) -> tuple[Callable[[], object], Callable[[], object]]:
    """Dense and slim runners of ``runtime``, each checked against eager torch on ``x``."""
    if runtime == "onnxruntime":
        pair = tuple(_onnx_runner(files[k], x, threads) for k in ("dense", "slim"))
    else:
        if runtime == "inductor":
            torch._dynamo.reset()  # one compiled dense/slim pair alive at a time
        pair = tuple(TORCH_RUNTIMES[runtime](models[k], x) for k in ("dense", "slim"))
    for label, runner in zip(("dense", "slim"), pair, strict=True):
        with torch.no_grad():
            expected = models[label](x)
        got = torch.as_tensor(runner())
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3, msg=f"{runtime} {label}")
    return pair
