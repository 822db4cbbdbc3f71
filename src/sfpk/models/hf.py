"""Hugging Face transformers models (``hf:<hub id or local folder>``), loaded lazily.

``create("hf:facebook/deit-tiny-patch16-224", num_classes=1000)`` loads the checkpoint with
``from_pretrained`` from a local folder (written by ``save_pretrained``) or from the user's
Hugging Face Hub cache, and wraps it in :class:`HFModel`, whose ``forward(x)`` returns
plain logits, so every method, pipeline and :func:`sfpk.prune` work unchanged:

* ``task="classification"`` (``AutoModelForImageClassification``: ViT, DeiT, also
  distilled, Swin, ...): ``pixel_values [B, C, H, W] -> logits [B, num_classes]``.
* ``task="language_model"`` (``AutoModelForCausalLM``: GPT-2, Llama, ...):
  ``input_ids [B, T] -> logits [B, T, V]``.

* ``task="denoise"``: a folder whose ``config.json`` names a diffusers UNet
  (``_class_name: UNet2DModel``) is loaded with ``UNet2DModel.from_pretrained`` into a
  :class:`sfpk.models.diffusion.DenoisingModel` (``diffusers`` needed, nothing downloaded).

The task comes from ``config.architectures`` (else the model type), or the ``task=`` option.
Nothing is downloaded unless the option ``download=True`` allows ``from_pretrained`` to.

GPT-2's ``Conv1D`` layers (``y = x W + b`` with ``W`` ``[in, out]``) are replaced by
``nn.Linear`` with the transposed weight on load: the default prunable rule then sees all of
attention and MLP, and structured masks keep their meaning (dim 0 = output). The wrapper's
``sfpk_default_exclude`` leaves embeddings (with a ViT's patch-embedding conv and position
tables), norms and the LM head dense by default; an image classifier's head stays prunable.

``transformers`` is optional: ``pip install 'sfpk[hf]'``.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError, check_choice
from .diffusion import is_unet_folder, load_unet_folder
from .registry import register_prefix

__all__ = [
    "HF_PREFIX",
    "TASKS",
    "HFModel",
    "hf_model",
    "conv1d_to_linear_",
    "default_exclude",
]

log = logging.getLogger(__name__)

HF_PREFIX = "hf"
Task = Literal["classification", "language_model"]
TASKS: tuple[str, ...] = ("classification", "language_model")
_AUTO_CLASSES = {
    "classification": "AutoModelForImageClassification",
    "language_model": "AutoModelForCausalLM",
}
# A Hub id is "name" or "owner/name"; anything else that is not a folder is a missing folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class HFModel(nn.Module):
    """A transformers model that returns plain logits: ``forward(x) -> Tensor``.

    The transformers model is the submodule ``hf``, so parameter names read as in the
    checkpoint with an ``hf.`` prefix (``hf.vit.layers.0.attention.q_proj.weight``).

    Args:
        model: a ``...ForImageClassification`` or ``...ForCausalLM`` model.
        task: ``"classification"`` (pixel values -> ``[B, C]``) or ``"language_model"``
            (token ids ``[B, T]`` -> ``[B, T, V]``).
        exclude: glob patterns of parameters the default prunable rule leaves out
            (``sfpk_default_exclude``, see :func:`sfpk.masks.prunable.prunable_parameters`).
    """

    sfpk_pretrained = True  # the weights come from a checkpoint, not a fresh init

    def __init__(self, model: nn.Module, task: Task, *, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        check_choice("task", task, TASKS)
        self.hf = model
        self.sfpk_task: Task = task
        self.sfpk_default_exclude: list[str] = list(exclude)

    def forward(self, x: Tensor) -> Tensor:
        if self.sfpk_task == "language_model":
            # SynFlow probes with an all-ones float input: read it as token ids (token 1).
            ids = x.long() if x.is_floating_point() else x
            return self.hf(input_ids=ids, use_cache=False).logits
        return self.hf(pixel_values=x).logits


def _import_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(
            f"model names starting with '{HF_PREFIX}:' need transformers, which is not "
            "installed; pip install 'sfpk[hf]'"
        ) from None


def conv1d_to_linear_(model: nn.Module, conv1d_type: type[nn.Module]) -> list[str]:
    """Replace every ``conv1d_type`` layer of ``model`` by an equal ``nn.Linear`` (mutates it).

    ``Conv1D`` (GPT-2) computes ``x @ W + b`` with ``W`` of shape ``[in, out]``; the Linear
    holds ``W.T`` (``[out, in]``) and the same bias, so its outputs are the same.

    Returns:
        The qualified names of the replaced layers, in model order.
    """
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, conv1d_type):
                continue
            weight = child.weight
            bias = getattr(child, "bias", None)
            linear = nn.Linear(
                weight.shape[0], weight.shape[1], bias=bias is not None,
                device=weight.device, dtype=weight.dtype,
            )  # fmt: skip
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                if bias is not None:
                    linear.bias.copy_(bias)
            linear.requires_grad_(weight.requires_grad)
            setattr(parent, child_name, linear)
            replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return replaced


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


def _embedding_modules(model: nn.Module) -> list[nn.Module]:
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None:
            found.append(module)
    return found


def default_exclude(model: nn.Module, prefix: str = "hf.") -> list[str]:
    """Glob patterns of the embeddings, norms and LM head of a transformers ``model``.

    A module is left out with all its parameters when it is an ``nn.Embedding``, a norm, a
    module named ``embeddings`` (a ViT's patch conv, [CLS] token and position table), or the
    model's input or output embeddings (an LM head). Layer indices become ``*``, so one
    pattern covers every block: ``hf.transformer.h.*.ln_1.*``.
    """
    special = {id(m) for m in _embedding_modules(model)}
    covered: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in covered):
            continue
        if (
            id(module) in special
            or isinstance(module, nn.Embedding)
            or name.rsplit(".", 1)[-1] == "embeddings"
            or _is_norm(module)
        ):
            covered.append(name)
    patterns = {re.sub(r"(?<=\.)\d+(?=\.|$)", "*", f"{prefix}{n}") + ".*" for n in covered}
    return sorted(patterns)


def _source(name: str) -> str:
    """The local folder ``name`` names, or ``name`` itself as a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{HF_PREFIX}:{name}: the folder has no config.json "
                "(write it with the model's save_pretrained)"
            )
        return str(path)
    if not _HUB_ID.fullmatch(name):
        raise ConfigError(f"{HF_PREFIX}:{name}: no such folder")
    return name


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_config(transformers: Any, name: str, download: bool) -> Any:
    """The checkpoint's config, or a one-line ConfigError naming what is missing."""
    source = _source(name)
    try:
        return transformers.AutoConfig.from_pretrained(source, local_files_only=not download)
    except OSError as err:
        if download or Path(source).is_dir():
            raise ConfigError(f"{HF_PREFIX}:{name}: cannot load it ({_first_line(err)})") from None
        raise ConfigError(
            f"{HF_PREFIX}:{name}: not a local folder, and no copy of the Hugging Face model "
            f"{name!r} is in the Hub cache; download it first (`hf download {name}`), pass a "
            "folder written by save_pretrained, or allow the download with the model option "
            "download=true"
        ) from None
    except ValueError as err:  # e.g. a model type this transformers does not know
        raise ConfigError(
            f"{HF_PREFIX}:{name}: cannot read its config ({_first_line(err)})"
        ) from None


def _names(values: Iterable[str | tuple[str, ...]]) -> set[str]:
    out: set[str] = set()
    for value in values:
        out.update((value,) if isinstance(value, str) else value)
    return out


def _task_of(name: str, config: Any) -> Task:
    """``"classification"`` or ``"language_model"``, from the architectures or model type."""
    from transformers.models.auto import modeling_auto as auto

    mappings: dict[Task, dict[str, Any]] = {
        "classification": auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "language_model": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    }
    for architecture in getattr(config, "architectures", None) or []:
        for task, mapping in mappings.items():
            if architecture in _names(mapping.values()):
                return task
    for task, mapping in mappings.items():
        if getattr(config, "model_type", None) in mapping:
            return task
    raise ConfigError(
        f"{HF_PREFIX}:{name}: cannot tell whether {getattr(config, 'model_type', '?')!r} "
        "is an image classifier or a causal language model; give the model option "
        "task=classification or task=language_model"
    )


def _load(
    transformers: Any, name: str, config: Any, task: Task, num_classes: int, **options: Any
) -> nn.Module:
    auto = getattr(transformers, _AUTO_CLASSES[task])
    if task == "classification" and config.num_labels != num_classes:
        log.info(
            "%s:%s: classifier resized from %d to %d classes (the new head is randomly "
            "initialised)", HF_PREFIX, name, config.num_labels, num_classes,
        )  # fmt: skip
        config.num_labels = num_classes
        options["ignore_mismatched_sizes"] = True
    try:
        return auto.from_pretrained(_source(name), config=config, **options)
    except (OSError, ValueError) as err:  # e.g. task=language_model for a ViT checkpoint
        raise ConfigError(
            f"{HF_PREFIX}:{name}: cannot load it as a {task} ({_first_line(err)})"
        ) from None


@register_prefix(HF_PREFIX)
def hf_model(
    name: str,
    *,
    num_classes: int,
    task: Task | None = None,
    attn_implementation: str = "eager",
    download: bool = False,
    timesteps: Sequence[int] | None = None,
    num_train_timesteps: int | None = None,
) -> nn.Module:
    """Load ``name`` (a folder or a Hub id) with transformers and wrap it in :class:`HFModel`.

    Args:
        name: a folder written by ``save_pretrained``, or a Hub id in the local Hub cache.
        num_classes: image classifiers get a new, randomly initialised head of this size
            when the checkpoint's differs (logged); for a language model it is the number
            of token ids the data uses, at most the vocabulary size.
        task: ``"classification"`` or ``"language_model"``; None: from the config.
        attn_implementation: transformers' attention kernel. The default ``"eager"`` is
            differentiable twice, which GraSP needs; ``"sdpa"`` is faster for the others.
        download: let ``from_pretrained`` download a Hub id that is not in the cache.
        timesteps, num_train_timesteps: UNet folders only: the ``[low, high)`` range of the
            drawn timesteps and the DDPM schedule's length (default: the folder's
            ``scheduler_config.json``, else 1000 linear-beta steps).

    Returns:
        The :class:`HFModel`, in float32 and training mode.

    Raises:
        ConfigError: transformers is missing, the folder or id is not found, the task is
            unknown, or ``num_classes`` exceeds a language model's vocabulary.

    Example:
        >>> model = create("hf:facebook/deit-tiny-patch16-224", num_classes=1000)  # doctest: +SKIP
    """
    if is_unet_folder(name):
        if task not in (None, "denoise"):
            raise ConfigError(
                f"{HF_PREFIX}:{name}: the folder holds a diffusers UNet, whose task is "
                f"'denoise', not task={task!r}"
            )
        return load_unet_folder(name, timesteps=timesteps, num_train_timesteps=num_train_timesteps)
    if timesteps is not None or num_train_timesteps is not None:
        raise ConfigError(
            f"{HF_PREFIX}:{name}: timesteps / num_train_timesteps apply to diffusers UNet "
            "folders only (config.json with _class_name: UNet2DModel)"
        )
    transformers = _import_transformers()
    config = _read_config(transformers, name, download)
    task = check_choice("task", task, TASKS) if task is not None else _task_of(name, config)
    model = _load(
        transformers, name, config, task, num_classes,
        local_files_only=not download, attn_implementation=attn_implementation,
    ).float()  # fmt: skip
    conv1d = importlib.import_module("transformers.pytorch_utils").Conv1D
    converted = conv1d_to_linear_(model, conv1d)
    if task == "language_model":
        vocab = model.get_input_embeddings().num_embeddings
        if num_classes > vocab:
            raise ConfigError(
                f"{HF_PREFIX}:{name}: the data has {num_classes} token ids, more than the "
                f"model's vocabulary of {vocab}"
            )
    log.info(
        "%s:%s: loaded %s, task %s (%d Conv1D layers converted to Linear)",
        HF_PREFIX, name, type(model).__name__, task, len(converted),
    )  # fmt: skip
    return HFModel(model, task, exclude=default_exclude(model)).train()
