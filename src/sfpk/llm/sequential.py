"""Layer-wise (sequential) pruning of a decoder LM, block by block (SparseGPT's and Wanda's
workflow).

1. Record the inputs of block 0 for every calibration batch (:mod:`sfpk.llm.capture`).
2. For each block in turn: run it on its inputs with hooks on its linear layers that
   accumulate what the method needs (:mod:`sfpk.llm.stats`); prune every linear layer
   against its own inputs (:mod:`sfpk.llm.methods`); run the block again, now pruned: its
   outputs are the next block's inputs (so later blocks see the errors of earlier ones).

Peak memory is the model plus one block's calibration activations (the hidden states of
all S sequences, ``S·L·d`` numbers, plus one Gram matrix per linear layer of the block);
there is never a whole-model backward. Embeddings, norms and the LM head are not touched.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnknownNameError, check_fraction
from ..masks import Masks
from .blocks import Decoder, find_decoder
from .calibration import check_calibration, check_seqlen
from .capture import BlockInputs, capture_inputs, run_block
from .methods import GRAM_METHODS, METHODS, method_options, prune_layer
from .stats import record_inputs

__all__ = ["LayerwiseResult", "prune_layerwise"]

log = logging.getLogger(__name__)


@dataclass
class LayerwiseResult:
    """What :func:`prune_layerwise` did.

    Attributes:
        masks: the 0/1 keep masks of every pruned linear weight, keyed by parameter name
            in the caller's model (structure ``"unstructured"`` or ``"N:M"``, scope ``row``).
        seconds: wall time of the whole call.
        block_seconds: wall time per block (statistics, pruning and the pruned re-run).
        peak_rss_mb: the process's peak resident memory so far, in MiB.
    """

    masks: Masks
    seconds: float
    block_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def _check_structure(structure: str | None) -> tuple[int, int] | None:
    if structure is None or structure == "unstructured":
        return None
    parts = str(structure).split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise ConfigError(
        f"structure={structure!r}; layer-wise pruning takes None (unstructured, per output "
        "row) or 'N:M' with 0 < N < M, such as '2:4' or '4:8'"
    )


def _check_widths(decoder: Decoder, nm: tuple[int, int] | None) -> None:
    if nm is None:
        return
    for index in range(len(decoder)):
        for name, layer in decoder.linears(index).items():
            if layer.in_features % nm[1]:
                raise ConfigError(
                    f"structure={nm[0]}:{nm[1]} needs every layer's input width to be a "
                    f"multiple of {nm[1]}; {name} has in_features={layer.in_features}"
                )


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def _run_all(block: nn.Module, inputs: list[BlockInputs]) -> list[Tensor]:
    return [run_block(block, batch) for batch in inputs]


@torch.no_grad()
def _prune_block(
    decoder: Decoder,
    index: int,
    inputs: list[BlockInputs],
    spec: dict[str, Any],
) -> dict[str, Tensor]:
    """Prune block ``index`` in place against ``inputs``; returns name -> keep mask."""
    layers = decoder.linears(index)
    with record_inputs(layers, gram=spec["method"] in GRAM_METHODS) as stats:
        _run_all(decoder.blocks[index], inputs)
    masks = {}
    for name, layer in layers.items():
        weight, keep = prune_layer(
            spec["method"], layer.weight, stats[name], sparsity=spec["sparsity"],
            nm=spec["nm"], options=spec["options"], generator=spec["generator"],
        )  # fmt: skip
        layer.weight.copy_(weight.to(layer.weight.dtype))
        masks[f"{name}.weight"] = keep.to("cpu", torch.float32)
        del stats[name]  # free this layer's Gram matrix early
    return masks


def prune_layerwise(
    model: nn.Module,
    calibration: Tensor,
    *,
    method: str,
    sparsity: float,
    structure: str | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 8,
) -> LayerwiseResult:
    """Mutates ``model``: prunes every linear layer of its blocks, block by block.

    Each layer is pruned against its own calibration inputs, which come from the already
    pruned earlier blocks. Pruned weights are set to 0; ``sparsegpt`` (and ``sfpk`` /
    ``spode`` with ``update_weights``, the default) also update the kept weights.
    Unstructured masks compare weights within each output row (Wanda's rule, the LLM
    standard): every row loses exactly ``floor(sparsity * d_in)``.

    Args:
        model: a decoder LM (:func:`sfpk.llm.find_decoder`), an sfpk ``hf:`` model or bare.
        calibration: ``LongTensor [S, L]`` of token ids (:func:`sfpk.llm.sample_calibration`).
        method: ``mag``, ``wanda``, ``sparsegpt``, ``spode`` or ``sfpk``.
        sparsity: fraction of weights removed, in (0, 1).
        structure: None (unstructured) or ``"N:M"`` (``"2:4"``, ``"4:8"``): every group of M
            consecutive input weights loses ``floor(sparsity * M)``.
        options: method options (:class:`~sfpk.llm.methods.SparseGPTOptions`,
            :class:`~sfpk.llm.particles.ParticleOptions`); mag and wanda take none.
        seed: seed of the particle methods' mini-batch draws.
        progress: log one line per block at INFO level.
        batch_size: calibration sequences per forward.

    Returns:
        A :class:`LayerwiseResult`.

    Raises:
        UnknownNameError: an unknown method.
        ConfigError: a bad sparsity, structure, option, calibration tensor or seqlen, a
            model without a recognisable block list, or an N:M width that M does not divide.
            All are checked before the model is changed.

    Example:
        >>> calib = sample_calibration(train_ids, num_samples=128, seqlen=2048, seed=0)
        >>> result = prune_layerwise(model, calib, method="sparsegpt", sparsity=0.5)
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise UnknownNameError("method", method, METHODS)
    sparsity = check_fraction("sparsity", sparsity)
    nm = _check_structure(structure)
    spec_options = method_options(method, options)
    decoder = find_decoder(model)
    check_calibration(calibration)
    check_seqlen(model, calibration.shape[1])
    _check_widths(decoder, nm)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be >= 1")
    spec = {
        "method": method, "sparsity": sparsity, "nm": nm, "options": spec_options,
        "generator": torch.Generator().manual_seed(int(seed)),
    }  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        inputs = capture_inputs(decoder, calibration.to(_device(model)), batch_size=batch_size)
        tensors, block_seconds = {}, []
        for index, block in enumerate(decoder.blocks):
            began = time.perf_counter()
            tensors.update(_prune_block(decoder, index, inputs, spec))
            outputs = _run_all(block, inputs)
            for batch, hidden in zip(inputs, outputs, strict=True):
                batch.hidden = hidden
            block_seconds.append(time.perf_counter() - began)
            if progress:
                log.info("block %d/%d pruned in %.2f s", index + 1, len(decoder), block_seconds[-1])
    finally:
        model.train(was_training)
    masks = Masks(
        tensors,
        shapes={name: tuple(mask.shape) for name, mask in tensors.items()},
        structure=f"{nm[0]}:{nm[1]}" if nm is not None else "unstructured",
        method=method,
        target_sparsity=sparsity,
        scope="row",
    )
    return LayerwiseResult(masks, time.perf_counter() - start, block_seconds, _peak_rss_mb())
