"""The transformer blocks of a decoder language model, and the linear layers inside them.

Layer-wise pruning (:mod:`sfpk.llm.sequential`) walks a decoder LM block by block. This module
finds that ordered block list for the layouts LLM users prune:

* Hugging Face GPT-2 (``GPT2LMHeadModel``: ``transformer.h``; sfpk's ``hf:`` loader has
  replaced its ``Conv1D`` layers by ``nn.Linear``, bare HF models keep ``Conv1D``, which is
  not supported: convert it with :func:`sfpk.models.hf.conv1d_to_linear_` first),
* Llama-style models (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ...:
  ``model.layers``),
* OPT (``OPTForCausalLM``: ``model.decoder.layers``),
* the zoo's ``gpt_tiny`` (:class:`sfpk.models.transformer.GPTTiny`: ``blocks``),

each bare or inside sfpk's :class:`~sfpk.models.hf.HFModel` wrapper (its ``hf`` submodule).
The prunable layers of a block are its ``nn.Linear`` modules in model order; embeddings,
norms and the LM head live outside the blocks and so stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError

__all__ = ["SUPPORTED", "Decoder", "find_decoder", "max_positions"]

# (path of the block list below the LM, what it is called), tried in this order.
_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("transformer.h", "GPT-2"),
    ("model.layers", "Llama/Mistral/Qwen2"),
    ("model.decoder.layers", "OPT"),
    ("blocks", "gpt_tiny"),
)
SUPPORTED = (
    "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, OPTForCausalLM "
    "(bare or in sfpk's HFModel), and the zoo's gpt_tiny"
)
_POSITION_KEYS = ("n_positions", "max_position_embeddings")


@dataclass(frozen=True)
class Decoder:
    """The ordered blocks of a decoder LM, with the names they have in the caller's model.

    Attributes:
        lm: the language model that runs on token ids (the HF model inside an ``HFModel``).
        blocks: the transformer blocks, first to last.
        prefix: the qualified name of the block list in the caller's model, such as
            ``"hf.transformer.h"``; block ``i`` is ``f"{prefix}.{i}"``.
        layout: which layout matched (``"GPT-2"``, ``"Llama/Mistral/Qwen2"``, ``"OPT"``,
            ``"gpt_tiny"``).
    """

    lm: nn.Module
    blocks: tuple[nn.Module, ...]
    prefix: str
    layout: str

    def __len__(self) -> int:
        return len(self.blocks)

    def linears(self, index: int) -> dict[str, nn.Linear]:
        """The ``nn.Linear`` layers of block ``index``: qualified name in the caller's model
        (``"hf.model.layers.0.self_attn.q_proj"``) -> module, in model order."""
        return {
            f"{self.prefix}.{index}.{name}": module
            for name, module in self.blocks[index].named_modules()
            if isinstance(module, nn.Linear)
        }

    @property
    def is_hf(self) -> bool:
        """Whether ``lm`` is a transformers model (called with ``input_ids=``, no cache)."""
        return getattr(getattr(self.lm, "config", None), "model_type", None) is not None


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The LM inside sfpk's HFModel (``model.hf``) with its name prefix, else the model."""
    inner = getattr(model, "hf", None)
    if isinstance(inner, nn.Module) and getattr(model, "sfpk_task", None) == "language_model":
        return inner, "hf."
    return model, ""


def find_decoder(model: nn.Module) -> Decoder:
    """The ordered transformer blocks of decoder LM ``model`` (see the module docstring).

    Raises:
        ConfigError: no recognisable block list (the message names the model's class and
            the supported ones), a block list that is empty, or blocks without any
            ``nn.Linear`` (a bare HF GPT-2 whose ``Conv1D`` was not converted).

    Example:
        >>> decoder = find_decoder(create("gpt_tiny", num_classes=100))  # doctest: +SKIP
        >>> decoder.prefix, len(decoder)  # doctest: +SKIP
        ('blocks', 2)
    """
    lm, prefix = _unwrap(model)
    is_zoo_lm = getattr(lm, "sfpk_task", None) == "language_model"
    for path, layout in _LAYOUTS:
        if layout == "gpt_tiny" and not is_zoo_lm:
            continue  # vit_tiny has ``blocks`` too, but is no language model
        blocks = _get(lm, path)
        if isinstance(blocks, nn.ModuleList):
            decoder = Decoder(lm, tuple(blocks), f"{prefix}{path}", layout)
            _check_blocks(model, decoder)
            return decoder
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}"
        f"{f' (wrapping {type(lm).__name__})' if lm is not model else ''}: layer-wise pruning "
        f"supports {SUPPORTED}"
    )


def _check_blocks(model: nn.Module, decoder: Decoder) -> None:
    if not decoder.blocks:
        raise ConfigError(f"{type(model).__name__} has an empty block list {decoder.prefix!r}")
    if not decoder.linears(0):
        kinds = sorted({type(m).__name__ for m in decoder.blocks[0].modules()})
        raise ConfigError(
            f"block {decoder.prefix}.0 of {type(model).__name__} has no nn.Linear layer "
            f"(it has {', '.join(kinds)}); a bare GPT-2 keeps Conv1D: load it with sfpk's "
            "hf: loader or convert it with sfpk.models.hf.conv1d_to_linear_"
        )


def max_positions(decoder: Decoder) -> int | None:
    """The longest sequence the model takes (its position table), or None if unbounded."""
    config = getattr(decoder.lm, "config", None)
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    context = getattr(decoder.lm, "context", None)
    return context if isinstance(context, int) else None
