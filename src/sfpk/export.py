"""Export a pruned model as a plain state dict that rebuilds itself: ``export``, ``load_model``.

``export(model, masks, folder, architecture=...)`` writes into ``folder``:

* ``model.safetensors``: the state dict with the masks baked in (pruned entries are exact
  ``+0.0``; no mask keys), loadable into the plain architecture with
  ``load_state_dict(strict=True)``. Its header records the :class:`Architecture`, so
  :func:`load_model` needs nothing else (the file and its reading back are
  :mod:`sfpk.model_files`'s). With ``sparse=True`` the masked tensors are stored
  compressed (:mod:`sfpk.sparse_files`); the round trip is bit-exact.
* ``masks.safetensors``: the masks, in the format of :meth:`sfpk.Masks.save` (they fit the
  architecture before slimming).

With ``slim=True`` (structured masks) the pruned filters and channels are removed first
(:mod:`sfpk.slim`); the header then says ``"slimmed": true`` and :func:`load_model` resizes
the rebuilt architecture to the file's shapes. With ``format="onnx"`` the (masked or slim)
model is written as ``model.onnx`` instead and checked in onnxruntime
(:mod:`sfpk.onnx_export`). ``semi_structured=True`` checks that 2:4 masks can be converted
on this machine's GPU (:mod:`sfpk.semi_structured`) and lists the layers in the header.

:func:`export_run` does the same for a run directory, taking the architecture from its
``config.yaml`` and data set. The file format is described in ``docs/export.md``.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import data, models
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, DataError, SfpkError, check_choice
from .masks import Masks, load_masks
from .model_files import (
    MASKS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    Architecture,
    load_model,
    read_weights,
)
from .onnx_export import export_onnx
from .semi_structured import (
    check_semi_structured_support,
    semi_structured_layers,
    to_semi_structured_,
)
from .slim import check_slimmable, resize_to_state_, slim_model
from .sparse_files import write_weights_file

__all__ = [
    "FORMATS",
    "MODEL_FILE",
    "MASKS_FILE",
    "ONNX_FILE",
    "Architecture",
    "bake",
    "export",
    "export_run",
    "load_model",
    "read_weights",
    "run_architecture",
]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("safetensors", "onnx")


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
            " (for a model outside the zoo, use sfpk.slim.slim_model or "
            "sfpk.onnx_export.export_onnx with an example input)"
        )
    generator = torch.Generator().manual_seed(0)
    shape = (2, *architecture.input_shape)
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if embeddings:
        vocabulary = min(m.num_embeddings for m in embeddings)
        return torch.randint(0, vocabulary, shape, generator=generator)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(shape, generator=generator).to(dtype)


def _check_options(masks: Masks | None, *, sparse: bool, slim: bool, format: str) -> None:
    check_choice("format", format, FORMATS)
    if sparse and format != "safetensors":
        raise ConfigError(f"sparse=True stores safetensors tensors compressed; format={format!r}")
    if slim:
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
    sparse: bool = False,
    slim: bool = False,
    format: str = "safetensors",
    semi_structured: bool = False,
    overwrite: bool = False,
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
        sparse: store each masked tensor compressed (kept values + bitmask or int32
            indices, whichever is smaller; see :mod:`sfpk.sparse_files`). Lossless.
        slim: remove the pruned filters/channels of ``filter`` or ``channel`` masks
            (:func:`sfpk.slim.slim_model`); the outputs stay those of the masked model.
        format: ``"safetensors"`` or ``"onnx"`` (checked in onnxruntime against torch).
        semi_structured: with ``2:4`` masks, convert the linear layers on this machine's
            GPU, check the outputs and list them in the header.
        overwrite: replace an existing model file in ``path``.

    Returns:
        The path of ``model.safetensors`` (or ``model.onnx``).

    Raises:
        MaskMismatchError: the masks do not fit the model.
        ConfigError: the architecture does not fit the weights, ``path`` is a run directory
            or a file, or already holds a model (without ``overwrite``); ``slim`` with masks
            that are not structured; ``semi_structured`` without 2:4 masks or without a
            supported GPU; ``sparse`` with ONNX; an optional extra (``slim``, ``onnx``) that
            is not installed.
        SfpkError: onnxruntime's outputs differ from torch's.

    Example:
        >>> arch = Architecture("resnet20", num_classes=10, input_shape=(3, 32, 32))
        >>> export(model, masks, "out", architecture=arch, slim=True)   # doctest: +SKIP
        >>> model = load_model("out")                                    # doctest: +SKIP
    """
    _check_options(masks, sparse=sparse, slim=slim, format=format)
    folder = Path(path)
    target = folder / (ONNX_FILE if format == "onnx" else MODEL_FILE)
    _check_folder(folder, target, overwrite=overwrite)
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
        sparse_names = set(masks.effective_masks()) if sparse and masks is not None else set()
        folder.mkdir(parents=True, exist_ok=True)
        written = write_weights_file(target, state, header, sparse_names=sparse_names)
    if masks is not None:
        masks.save(folder / MASKS_FILE)
    return written


def _masked_copy(model: nn.Module, masks: Masks | None) -> nn.Module:
    work = copy.deepcopy(model).eval()
    return masks.apply(work) if masks is not None else work


def run_architecture(config: Config, *, num_classes: int | None = None) -> Architecture:
    """The architecture of a run, from its config (and its data set, for ``num_classes``).

    The model is built as :class:`sfpk.pipelines.context.Context` builds it; the number of
    classes comes from loading the run's data set unless ``num_classes`` is given.

    Raises:
        DataError: the data set cannot be loaded here (the message suggests ``num_classes``).
    """
    input_shape = data.dataset_spec(config.data.dataset).input_shape
    if num_classes is None:
        try:
            splits = data.load_dataset(
                config.data.dataset,
                data_dir=config.data.data_dir,
                seed=config.run.seed,
                val_fraction=config.data.val_fraction,
                augment=False,
                **config.data.options,  # e.g. a text data set's tokenizer sets its vocabulary
            )
        except DataError as exc:
            raise DataError(
                f"cannot read the run's data set to count its classes ({exc}); "
                f"give the number of classes (--num-classes N)"
            ) from exc
        num_classes, input_shape = splits.num_classes, splits.input_shape
    return Architecture(
        name=config.model.name,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        options=dict(config.model.options),
    )


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sparse: bool = False,
    slim: bool = False,
    format: str = "safetensors",
    semi_structured: bool = False,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the final model and masks of a finished run directory (see :func:`export`).

    Args:
        run_dir: a run directory with ``config.yaml`` and ``model.safetensors`` (and
            ``masks.safetensors`` for a pruned run).
        out: output folder (not the run directory).
        sparse: store the masked tensors compressed.
        slim: remove the pruned filters/channels (structured runs only).
        format: ``"safetensors"`` or ``"onnx"`` (a Hugging Face ``save_pretrained`` folder
            of an ``hf:`` run: :func:`sfpk.hf_export.export_hf_run`).
        semi_structured: convert 2:4 linear layers on this machine's GPU (2:4 runs only).
        num_classes: skip loading the data set to count the classes.
        overwrite: replace an earlier export in ``out``.

    Returns:
        The path of the exported ``model.safetensors`` (or ``model.onnx``).

    Raises:
        CheckpointError: no such run directory, no ``config.yaml`` or ``model.safetensors``,
            or files that do not fit the run's model.
        MaskMismatchError: the run's masks do not fit its model.
        ConfigError: an option that does not fit the run (see :func:`export`).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run directory {str(run)!r} does not exist")
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{str(run)!r} is not a run directory (no config.yaml)")
    if not (run / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{str(run)!r} has no {MODEL_FILE}: the run has not finished "
            f"(continue it with `sfpk resume {run}`)"
        )
    config = load_config(run / "config.yaml", check_paths=False)
    architecture = run_architecture(config, num_classes=num_classes)
    model = models.load_weights(architecture.build(), run / MODEL_FILE)
    masks = load_masks(run / MASKS_FILE, model) if (run / MASKS_FILE).is_file() else None
    return export(
        model,
        masks,
        out,
        architecture=architecture,
        sparse=sparse,
        slim=slim,
        format=format,
        semi_structured=semi_structured,
        overwrite=overwrite,
    )
