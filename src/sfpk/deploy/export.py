"""Export a pruned model as a plain state dict that rebuilds itself: ``export``, ``load_model``.

``export(model, masks, folder, architecture=...)`` writes into ``folder``:

* ``model.safetensors``: the state dict with the masks baked in (pruned entries are exact
  ``+0.0``; no mask keys), loadable into the plain architecture with
  ``load_state_dict(strict=True)``. Its header records the :class:`Architecture`, so
  :func:`load_model` needs nothing else (the file and its reading back: the first part
  below). With ``sparse=True`` the masked tensors are stored
  compressed (:mod:`sfpk.deploy.sparse_files`); the round trip is bit-exact.
* ``masks.safetensors``: the masks, in the format of :meth:`sfpk.Masks.save` (they fit the
  architecture before slimming).

With ``slim=True`` (structured masks) the pruned filters and channels are removed first
(:mod:`sfpk.deploy.slim`); the header then says ``"slimmed": true`` and :func:`load_model` resizes
the rebuilt architecture to the file's shapes. With ``format="onnx"`` the (masked or slim)
model is written as ``model.onnx`` instead and checked in onnxruntime
(:mod:`sfpk.deploy.onnx_export`). ``semi_structured=True`` checks that 2:4 masks can be converted
on this machine's GPU (:mod:`sfpk.deploy.semi_structured`) and lists the layers in the header.

A run directory is exported by :func:`sfpk.pipelines.run.export_run` (``sfpk export``), which
takes the architecture from its ``config.yaml`` and data set. The file format is described
in ``docs/export.md``.

**The exported model file** (the first part below): its names, the :class:`Architecture` its
header records, and reading it back (:func:`read_weights`, :func:`load_model`).
``model.safetensors`` holds the state dict with the masks baked in; its header (safetensors
metadata ``"sfpk"``) records the :class:`Architecture` (zoo model name, options,
``num_classes``, ``input_shape``), so :func:`load_model` needs nothing else. Compressed
tensors are read back bit-exact; a slimmed file (``"slimmed": true``) resizes the rebuilt
architecture to the file's shapes (:func:`sfpk.deploy.slim.resize_to_state_`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import models
from ..errors import CheckpointError, ConfigError, SfpkError, check_choice
from ..masks.core import Masks
from .onnx_export import export_onnx
from .semi_structured import (
    check_semi_structured_support,
    semi_structured_layers,
    to_semi_structured_,
)
from .slim import check_slimmable, resize_to_state_, slim_model
from .sparse_files import read_weights_file, write_weights_file

__all__ = [
    "FORMATS",
    "ExportOptions",
    "MODEL_FILE",
    "MASKS_FILE",
    "ONNX_FILE",
    "Architecture",
    "bake",
    "export",
    "load_model",
    "read_weights",
]

MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Architecture:
    """How to rebuild a zoo model: ``sfpk.models.create(name, num_classes=..., ...)``.

    Attributes:
        name: a name of :func:`sfpk.models.list_models` (or ``tv:`` / ``timm:`` ``<name>``).
        num_classes: number of output classes.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``; None for the model's
            natural input.
        options: the builder's options, e.g. ``{"hidden": [32]}`` for ``mlp``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture (see :func:`sfpk.models.create`)."""
        return models.create(
            self.name, num_classes=self.num_classes, input_shape=self.input_shape, **self.options
        )

    def to_header(self) -> dict[str, Any]:
        """This architecture as JSON-able data."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "options": dict(self.options),
        }

    @classmethod
    def from_header(cls, info: Any) -> Architecture:
        """Read :meth:`to_header`'s output back (ValueError if it is malformed)."""
        if not isinstance(info, dict) or not isinstance(info.get("name"), str):
            raise ValueError(f"malformed architecture record {info!r}")
        shape = info.get("input_shape")
        options = info.get("options") or {}
        if not isinstance(info.get("num_classes"), int) or not isinstance(options, dict):
            raise ValueError(f"malformed architecture record {info!r}")
        return cls(
            name=info["name"],
            num_classes=info["num_classes"],
            input_shape=None if shape is None else tuple(int(s) for s in shape),
            options=options,
        )


def _model_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The dense state dict of an exported file (compressed or not) or a plain safetensors file.

    Args:
        path: a ``model.safetensors`` file, or the folder :func:`export` wrote.

    Raises:
        CheckpointError: missing, corrupted or foreign file.
    """
    return read_weights_file(_model_file(path))[0]


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild an exported model from its file alone, in eval mode.

    Args:
        path: a ``model.safetensors`` written by :func:`export`, or its folder.

    Returns:
        The model of the recorded architecture with the file's weights (and the file's
        floating dtype, if that is not float32), in eval mode.

    Raises:
        CheckpointError: the file is missing or corrupted, records no architecture (weights
            only) or an unknown one, or its weights do not fit that architecture.
    """
    file = _model_file(path)
    state, info = read_weights_file(file)
    if info.get("architecture") is None:
        raise CheckpointError(
            f"{str(file)!r} has weights only (no architecture recorded): build the model "
            f"yourself and load them with sfpk.models.load_weights(model, path)"
            + (
                ", or model.load_state_dict(sfpk.read_weights(path)) for its compressed tensors"
                if info.get("encodings")
                else ""
            )
        )
    try:
        architecture = Architecture.from_header(info["architecture"])
        model = architecture.build()
    except (ValueError, SfpkError) as exc:  # UnknownNameError / ConfigError are ValueErrors
        raise CheckpointError(f"{str(file)!r}: cannot rebuild its architecture: {exc}") from exc
    if info.get("slimmed"):
        resize_to_state_(model, state)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1 and dtypes != {torch.float32}:
        model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{str(file)!r}: the weights do not fit architecture {architecture.name!r}: {detail}"
        ) from exc
    return model.eval()


log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("safetensors", "onnx")


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export` writes a model: the file format and what is done on the way.

    The options of one export travel as one value (``sfpk export``'s flags, a run's export);
    :func:`export` also takes them as keywords, ``export(..., slim=True)``.

    Attributes:
        sparse: store each masked tensor compressed (kept values + bitmask or int32
            indices, whichever is smaller; see :mod:`sfpk.deploy.sparse_files`). Lossless.
        slim: remove the pruned filters/channels of ``filter`` or ``channel`` masks
            (:func:`sfpk.deploy.slim.slim_model`); the outputs stay those of the masked model.
        format: ``"safetensors"`` or ``"onnx"`` (checked in onnxruntime against torch).
        semi_structured: with ``2:4`` masks, convert the linear layers on this machine's
            GPU, check the outputs and list them in the header.
        overwrite: replace an existing model file in the output folder.

    Raises:
        UnknownNameError: ``format`` is not one of :data:`FORMATS`.
        ConfigError: ``sparse`` with ONNX.
    """

    sparse: bool = False
    slim: bool = False
    format: str = "safetensors"
    semi_structured: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("format", self.format, FORMATS)
        if self.sparse and self.format != "safetensors":
            raise ConfigError(
                f"sparse=True stores safetensors tensors compressed; format={self.format!r}"
            )

    @classmethod
    def of(cls, options: ExportOptions | None, keywords: Mapping[str, Any]) -> ExportOptions:
        """The options of a call: ``options``, or the fields given as ``keywords`` (not both).

        Raises:
            ConfigError: a keyword that is no option (the message names the options), or
                both ``options`` and keywords.
        """
        names = [f.name for f in fields(cls)]
        stray = sorted(set(keywords) - set(names))
        if stray:
            raise ConfigError(f"unknown export option(s) {stray}; the options are {names}")
        if options is None:
            return cls(**keywords)
        if keywords:
            raise ConfigError(
                f"give the export options either as options=ExportOptions(...) or as "
                f"keywords, not both (got options and {sorted(keywords)})"
            )
        return options


def bake(model: nn.Module, masks: Masks | None) -> dict[str, Tensor]:
    """The state dict of ``model`` on the CPU with ``masks`` baked in; ``model`` is unchanged.

    Pruned entries become exact ``+0.0`` (``torch.where``, not a product, so no ``-0.0``).

    Raises:
        MaskMismatchError: if ``masks`` do not fit ``model``.
    """
    state = {n: t.detach().to("cpu").clone() for n, t in model.state_dict().items()}
    if masks is None:
        return state
    masks.check_fits(model)
    for name, mask in masks.effective_masks().items():
        weight = state[name]
        keep = (mask != 0).to("cpu")
        state[name] = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))
    return state


def _check_folder(folder: Path, target: Path, *, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"export folder {str(folder)!r} is a file")
    if (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{str(folder)!r} is a run directory; export into another folder so that its "
            f"{MODEL_FILE} is not replaced"
        )
    if target.exists() and not overwrite:
        raise ConfigError(f"{str(target)!r} already exists; pass overwrite=True (--overwrite)")


def _check_architecture(
    architecture: Architecture, state: dict[str, Tensor], *, slimmed: bool
) -> None:
    """Refuse to write a file whose architecture would not load its own weights."""
    try:
        model = architecture.build()
        if slimmed:
            resize_to_state_(model, state)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, CheckpointError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"architecture {architecture.name!r} (num_classes={architecture.num_classes}, "
            f"input_shape={architecture.input_shape}, options={architecture.options}) does not "
            f"fit the model's state dict: {detail}"
        ) from exc


def _example_input(model: nn.Module, architecture: Architecture | None, why: str) -> Tensor:
    """A fixed sample batch of 2 for tracing and checking (token ids for embedding models)."""
    if architecture is None or architecture.input_shape is None:
        raise ConfigError(
            f"{why} needs the input shape: pass architecture=Architecture(..., input_shape=...)"
            " (for a model outside the zoo, use sfpk.deploy.slim.slim_model or "
            "sfpk.deploy.onnx_export.export_onnx with an example input)"
        )
    generator = torch.Generator().manual_seed(0)
    shape = (2, *architecture.input_shape)
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if embeddings:
        vocabulary = min(m.num_embeddings for m in embeddings)
        return torch.randint(0, vocabulary, shape, generator=generator)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(shape, generator=generator).to(dtype)


def _check_options(masks: Masks | None, options: ExportOptions) -> None:
    if options.slim:
        if masks is None:
            raise ConfigError("slim=True removes pruned filters/channels, but masks is None")
        check_slimmable(masks.structure)


@torch.no_grad()
def _semi_structured(model: nn.Module, masks: Masks | None, sample: Tensor) -> list[str]:
    """Convert the 2:4 linear layers of a copy on the GPU, check its outputs, list them."""
    if masks is None:
        raise ConfigError("semi_structured=True needs 2:4 masks, but masks is None")
    names = semi_structured_layers(model, masks)
    device = check_semi_structured_support()
    dense = masks.apply(copy.deepcopy(model)).to(device=device, dtype=torch.float16).eval()
    converted = copy.deepcopy(dense)
    done = to_semi_structured_(converted, names)
    sample = sample.to(device)
    if sample.is_floating_point():
        sample = sample.to(torch.float16)
    if not torch.allclose(converted(sample), dense(sample), atol=1e-2, rtol=1e-2):
        raise SfpkError("the 2:4 semi-structured model's outputs differ from the dense one's")
    return done


def export(
    model: nn.Module,
    masks: Masks | None,
    path: str | os.PathLike,
    *,
    architecture: Architecture | None,
    options: ExportOptions | None = None,
    **keywords: Any,
) -> Path:
    """Write ``model`` with ``masks`` baked in, and the masks, into the folder ``path``.

    ``model`` is not changed. The architecture is checked by rebuilding it and loading the
    weights into it (``strict=True``) before anything is written.

    Args:
        model: the (trained, pruned) model.
        masks: its masks, or None for a dense model.
        path: output folder; gets ``model.safetensors`` (or ``model.onnx``) and (with masks)
            ``masks.safetensors``.
        architecture: how :func:`load_model` rebuilds the model; None for a model that is not
            from the zoo (the file then holds weights only).
        options: how to write it (:class:`ExportOptions`: ``sparse``, ``slim``, ``format``,
            ``semi_structured``, ``overwrite``); None: the defaults, or the options given
            as ``keywords``.
        **keywords: the fields of :class:`ExportOptions` instead of ``options``, e.g.
            ``slim=True, format="onnx"``.

    Returns:
        The path of ``model.safetensors`` (or ``model.onnx``).

    Raises:
        MaskMismatchError: the masks do not fit the model.
        ConfigError: the architecture does not fit the weights, ``path`` is a run directory
            or a file, or already holds a model (without ``overwrite``); ``slim`` with masks
            that are not structured; ``semi_structured`` without 2:4 masks or without a
            supported GPU; ``sparse`` with ONNX; an optional extra (``slim``, ``onnx``) that
            is not installed; an unknown option, or ``options`` and keywords together.
        SfpkError: onnxruntime's outputs differ from torch's.

    Example:
        >>> arch = Architecture("resnet20", num_classes=10, input_shape=(3, 32, 32))
        >>> export(model, masks, "out", architecture=arch, slim=True)   # doctest: +SKIP
        >>> model = load_model("out")                                    # doctest: +SKIP
    """
    opts = ExportOptions.of(options, keywords)
    _check_options(masks, opts)
    slim, format, semi_structured = opts.slim, opts.format, opts.semi_structured
    folder = Path(path)
    target = folder / (ONNX_FILE if format == "onnx" else MODEL_FILE)
    _check_folder(folder, target, overwrite=opts.overwrite)
    if masks is not None:
        masks.check_fits(model)
    header: dict[str, Any] = {
        "architecture": None if architecture is None else architecture.to_header(),
        "method": None if masks is None else masks.method,
        "structure": None if masks is None else masks.structure,
        "achieved_sparsity": None if masks is None else masks.sparsity(),
    }
    needs_sample = slim or format == "onnx" or semi_structured
    why = "slim=True" if slim else "format='onnx'" if format == "onnx" else "semi_structured"
    sample = _example_input(model, architecture, why) if needs_sample else None
    if semi_structured:
        header["semi_structured"] = _semi_structured(model, masks, sample)
    if slim:
        final = slim_model(model, masks, sample)
        state = bake(final, None)
        header["slimmed"] = True
    else:
        final = None
        state = bake(model, masks)
    if architecture is not None:
        _check_architecture(architecture, state, slimmed=slim)
    if format == "onnx":
        final = final if final is not None else _masked_copy(model, masks)
        folder.mkdir(parents=True, exist_ok=True)
        written = export_onnx(final, target, sample, metadata=header)
    else:
        sparse_names = set(masks.effective_masks()) if opts.sparse and masks is not None else set()
        folder.mkdir(parents=True, exist_ok=True)
        written = write_weights_file(target, state, header, sparse_names=sparse_names)
    if masks is not None:
        masks.save(folder / MASKS_FILE)
    return written


def _masked_copy(model: nn.Module, masks: Masks | None) -> nn.Module:
    work = copy.deepcopy(model).eval()
    return masks.apply(work) if masks is not None else work
