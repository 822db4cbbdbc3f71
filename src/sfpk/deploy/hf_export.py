"""Hugging Face checkpoints out: a pruned ``hf:`` model as a ``save_pretrained`` folder.

``export_hf(model, folder, masks)`` (or ``sfpk export RUN --out DIR --format hf``) writes a
folder that ``transformers``' ``AutoModelForCausalLM`` / ``AutoModelForImageClassification``
``.from_pretrained(folder)`` loads with nothing from sfpk, and that computes what sfpk's
masked model computes:

* ``config.json`` (the checkpoint's own config; only an MLP width changes when the model is
  slimmed) and ``model.safetensors`` in transformers' own layout: GPT-2's ``Conv1D``
  weights, which the ``hf:`` loader turned into ``nn.Linear`` (:mod:`sfpk.models.hf`), are
  transposed back;
* the masks baked in: pruned weights are exact ``+0.0`` in the file;
* the tokenizer (and image processor) files of the source folder, copied as they are;
* ``sfpk_export.json``: the source, the masks' method / structure / sparsity, whether the
  model was slimmed and, if it was not, why (the note is also logged).

**Slimming** (:mod:`sfpk.deploy.hf_slim`). Where pruned MLP neurons and attention heads can be
removed and the config can still describe the model, they are: a config has one MLP width
and one head count for every layer, so the same number goes from every block (the fewest any
block can lose; the rest stay zeros, noted). Heads are removed only where the config states
``head_dim`` (Llama, Mistral, Qwen2); GPT-2's and ViT's pruned heads stay zeros in place,
with a note.

Everything is checked before the folder is written: the logits of the exported model on a
fixed sample must equal those of sfpk's masked model (``atol=1e-5``).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, SfpkError
from ..masks.core import Masks
from ..masks.prunable import parse_nm
from .export import MODEL_FILE
from .hf_slim import WIDTH_KEYS, apply_slim_, plan_slim

__all__ = [
    "EXPORT_INFO",
    "TOKENIZER_FILES",
    "WIDTH_KEYS",
    "HFExport",
    "export_hf",
    "check_hf_folder",
    "write_hf_folder",
    "formats_for",
]

log = logging.getLogger(__name__)

EXPORT_INFO = "sfpk_export.json"
# Tokenizer and processor files of a save_pretrained folder; copied when the source has them.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
ATOL = 1e-5


@dataclass(frozen=True)
class HFExport:
    """What :func:`export_hf` wrote.

    Attributes:
        folder: the ``save_pretrained`` folder.
        slimmed: whether pruned MLP neurons or attention heads were removed (the config's
            width or head counts changed; sfpk_export.json's ``slim`` says which).
        note: why the model was not (fully) slimmed; None when nothing is left to say.
        tokenizer_files: the tokenizer / processor files copied from the source folder.
        max_abs_diff: largest logit difference to sfpk's masked model on the check sample.
    """

    folder: Path
    slimmed: bool
    note: str | None
    tokenizer_files: tuple[str, ...]
    max_abs_diff: float


def formats_for(model_name: str) -> tuple[str, ...]:
    """The ``sfpk export`` formats a run of ``model_name`` can be written in."""
    base = ("safetensors", "onnx")
    return (*base, "hf") if model_name.lower().startswith("hf:") else base


# -- the model --------------------------------------------------------------------------


def _split(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside ``model`` and the prefix of its names in ``model``."""
    hf = getattr(model, "hf", None)
    if isinstance(hf, nn.Module) and hasattr(hf, "config"):
        return hf, "hf."
    if hasattr(model, "config") and hasattr(model, "save_pretrained"):
        return model, ""
    raise ConfigError(
        f"export_hf needs an hf: model (sfpk's HFModel, or a transformers PreTrainedModel), "
        f"not {type(model).__name__}; export it with format 'safetensors' or 'onnx'"
    )


@torch.no_grad()
def _baked_copy(model: nn.Module, masks: Masks | None) -> nn.Module:
    """A CPU copy of the transformers model with ``masks`` baked in (exact +0.0)."""
    hf, prefix = _split(model)
    work = copy.deepcopy(hf).to("cpu")
    params = dict(work.named_parameters())
    for name, mask in (masks.effective_masks() if masks is not None else {}).items():
        weight = params[name[len(prefix) :]]
        keep = mask.to("cpu") != 0
        weight.copy_(torch.where(keep, weight, torch.zeros((), dtype=weight.dtype)))
    return work.eval()


def _conv1d_type() -> type[nn.Module]:
    return importlib.import_module("transformers.pytorch_utils").Conv1D


def _conv1d_names(work: nn.Module) -> list[str]:
    """The modules that are ``Conv1D`` in the model class built from its config (on meta)."""
    conv1d = _conv1d_type()
    with torch.device("meta"):
        reference = type(work)(copy.deepcopy(work.config))
    return [name for name, module in reference.named_modules() if isinstance(module, conv1d)]


@torch.no_grad()
def _restore_conv1d_(work: nn.Module, names: list[str]) -> None:
    """Put GPT-2's ``Conv1D`` back where the ``hf:`` loader put ``nn.Linear`` (mutates)."""
    conv1d = _conv1d_type()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = work.get_submodule(parent_name) if parent_name else work
        linear = getattr(parent, child)
        if isinstance(linear, conv1d):
            continue
        layer = conv1d(linear.out_features, linear.in_features)
        layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        layer.weight.copy_(linear.weight.t())
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        else:  # Conv1D always has a bias; a Linear without one adds zero
            layer.bias.zero_()
        setattr(parent, child, layer)


# -- slimming (sfpk.deploy.hf_slim) -------------------------------------------------------------


def _slim_kinds(structure: str | None) -> tuple[str, ...]:
    """The group kinds whose pruned groups the export tries to remove, for ``structure``."""
    if structure is None or structure == "unstructured" or parse_nm(structure) is not None:
        return ()  # scattered zeros: nothing a config could express
    if structure in ("head", "neuron"):
        return (structure,)
    return ("head", "neuron") if structure == "head+neuron" else ("neuron",)


# -- checking ---------------------------------------------------------------------------


def _task(work: nn.Module) -> str:
    return "classification" if "pixel_values" in _forward_names(work) else "language_model"


def _forward_names(work: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(work.forward).parameters)


def _sample(work: nn.Module) -> dict[str, Tensor]:
    """A fixed input batch of 2 for the logits check."""
    config = work.config
    generator = torch.Generator().manual_seed(0)
    if _task(work) == "classification":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(2, channels, size, size, generator=generator)}
    vocab = work.get_input_embeddings().num_embeddings
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", 16
    )
    length = max(1, min(8, int(positions)))
    return {"input_ids": torch.randint(0, vocab, (2, length), generator=generator)}


@torch.no_grad()
def _logits(work: nn.Module, sample: Mapping[str, Tensor]) -> Tensor:
    extra = {"use_cache": False} if "use_cache" in _forward_names(work) else {}
    return work(**sample, **extra).logits.float()


# -- files ------------------------------------------------------------------------------


def _source_folder(work: nn.Module, source: str | os.PathLike | None) -> Path | None:
    name = str(source) if source is not None else getattr(work.config, "_name_or_path", "")
    path = Path(name).expanduser() if name else None
    return path if path is not None and path.is_dir() else None


def _copy_tokenizer(source: Path | None, folder: Path) -> tuple[str, ...]:
    if source is None:
        return ()
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (folder / name).exists():
            shutil.copy2(source / name, folder / name)
            copied.append(name)
    return tuple(copied)


def check_hf_folder(folder: Path, *, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"export folder {str(folder)!r} is a file")
    if (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{str(folder)!r} is a run directory; export into another folder so that its "
            f"{MODEL_FILE} is not replaced"
        )
    if (folder / "config.json").exists() and not overwrite:
        raise ConfigError(
            f"{str(folder / 'config.json')!r} already exists; pass overwrite=True (--overwrite)"
        )


def export_hf(
    model_or_run: nn.Module | str | os.PathLike,
    folder: str | os.PathLike,
    masks: Masks | None = None,
    *,
    source: str | os.PathLike | None = None,
    slim: bool = True,
    overwrite: bool = False,
) -> HFExport:
    """Write an ``hf:`` model (or a finished run of one) as a ``save_pretrained`` folder.

    ``model`` is not changed. The export is checked before the folder is written: its
    logits on a fixed sample equal those of the masked model (``atol=1e-5``).

    Args:
        model_or_run: sfpk's :class:`sfpk.models.hf.HFModel` (what ``hf:`` loads), a bare
            transformers model (a run directory: :func:`sfpk.pipelines.hf_run.export_hf_run`).
        folder: the output folder (not a run directory).
        masks: the model's masks (names as in ``model``), or None; ignored for a run.
        source: the folder to copy tokenizer files from; default: the folder the model was
            loaded from (its config's ``name_or_path``; for a run, the ``hf:`` folder).
        slim: remove pruned MLP neurons where the config can express the widths.
        overwrite: replace an earlier export in ``folder``.

    Returns:
        What was written (:class:`HFExport`).

    Raises:
        ConfigError: not an ``hf:`` model, ``folder`` is a file, a run directory or holds an
            export (without ``overwrite``).
        MaskMismatchError: the masks do not fit the model.
        SfpkError: the exported model's logits differ from the masked model's.

    Example:
        >>> export_hf(model, "out/", masks)                            # doctest: +SKIP
        >>> AutoModelForCausalLM.from_pretrained("out/")                 # doctest: +SKIP
    """
    if not isinstance(model_or_run, nn.Module):  # a run's config is read a layer above
        raise ConfigError(
            f"export_hf takes a model, got {type(model_or_run).__name__} {model_or_run!r}; "
            f"export a run directory with sfpk.pipelines.hf_run.export_hf_run "
            f"(`sfpk export RUN --format hf`)"
        )
    return write_hf_folder(
        model_or_run, Path(folder), masks, source, slim=slim, overwrite=overwrite
    )


def write_hf_folder(
    model: nn.Module,
    folder: Path,
    masks: Masks | None,
    source: str | os.PathLike | None,
    *,
    slim: bool,
    overwrite: bool,
    extra_info: Mapping[str, Any] | None = None,
) -> HFExport:
    _split(model)
    check_hf_folder(folder, overwrite=overwrite)
    if masks is not None:
        masks.check_fits(model)
    work = _baked_copy(model, masks)
    sample = _sample(work)
    expected = _logits(work, sample)  # the masked sfpk model (Linear layout, zeros baked)
    conv1d = _conv1d_names(work)
    kinds = _slim_kinds(None if masks is None else masks.structure)
    plan, notes = plan_slim(work, kinds) if kinds and slim else (None, [])
    if kinds and not slim:
        notes = ["slim=False: the pruned weights stay zeros in place"]
    slimmed = False
    if plan is not None:
        apply_slim_(work, plan)
        diff = (_logits(work, sample) - expected).abs().max().item()
        if diff <= ATOL:
            slimmed = True
            log.info("hf export: slimmed %s", plan.changes)
        else:  # keep the dense-with-zeros model
            work = _baked_copy(model, masks)
            notes.append(f"not slimmed: slimming changed the logits by {diff:.2e}")
    note = "; ".join(notes) or None
    _restore_conv1d_(work, conv1d)
    got = _logits(work, sample)
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if diff > ATOL:
        raise SfpkError(
            f"the exported model's logits differ from the masked model's by {diff:.2e} "
            f"(> {ATOL}); nothing was written"
        )
    if note:
        log.warning("hf export: not (fully) slimmed: %s", note)
    folder.mkdir(parents=True, exist_ok=True)
    work.save_pretrained(folder, safe_serialization=True)
    src = _source_folder(work, source)
    copied = _copy_tokenizer(src, folder)
    info = {
        "format": "sfpk-hf-export",
        "source": None if src is None else str(src.resolve()),
        "method": None if masks is None else masks.method,
        "structure": None if masks is None else masks.structure,
        "sparsity": None if masks is None else masks.sparsity(),
        "slimmed": slimmed,
        "slim": plan.changes if slimmed and plan is not None else None,
        "note": note,
        "tokenizer_files": list(copied),
        "max_abs_logit_diff": diff,
        **(extra_info or {}),
    }
    (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return HFExport(folder, slimmed, note, copied, diff)


# -- runs -------------------------------------------------------------------------------
