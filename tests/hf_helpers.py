"""Tiny random Hugging Face models written with ``save_pretrained`` (offline), for the HF
export and ``sfpk prune`` tests: GPT-2, Llama, ViT, DeiT (distilled), Swin, and a word-level
tokenizer in the language models' folders."""

from __future__ import annotations

import torch
import transformers

from lm_helpers import write_tokenizer_json

__all__ = ["CLASSES", "SENTENCES", "VISION", "VOCAB", "auto_class", "hf_configs", "write_hf_folder"]

VOCAB, CLASSES = 48, 3
VISION = {"vit", "deit", "swin"}
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "one two three four five"]


def hf_configs() -> dict[str, object]:
    """The tiny config of each kind (a few thousand weights each)."""
    tokens = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    llama = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, **tokens)
    llama.update(num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    vit = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2)
    vit.update(num_attention_heads=2, intermediate_size=32, num_labels=CLASSES)
    return {
        "gpt2": transformers.GPT2Config(
            n_positions=32, n_embd=16, n_layer=2, n_head=2, architectures=["GPT2LMHeadModel"],
            **tokens,
        ),
        "llama": transformers.LlamaConfig(**llama, architectures=["LlamaForCausalLM"]),
        "vit": transformers.ViTConfig(**vit, architectures=["ViTForImageClassification"]),
        "deit": transformers.DeiTConfig(
            **vit, architectures=["DeiTForImageClassificationWithTeacher"]
        ),
        "swin": transformers.SwinConfig(
            image_size=8, patch_size=2, num_channels=1, embed_dim=8, depths=[1, 1],
            num_heads=[2, 2], window_size=2, mlp_ratio=2.0, num_labels=CLASSES,
            architectures=["SwinForImageClassification"],
        ),
    }  # fmt: skip


def auto_class(kind: str):
    """The transformers Auto class that loads ``kind``."""
    return (
        transformers.AutoModelForImageClassification
        if kind in VISION
        else transformers.AutoModelForCausalLM
    )


def write_hf_folder(folder, kind: str) -> None:
    """A tiny random ``kind`` model (and, for LMs, a word-level tokenizer) in ``folder``."""
    torch.manual_seed(0)
    auto_class(kind).from_config(hf_configs()[kind]).save_pretrained(folder)
    if kind not in VISION:
        write_tokenizer_json(folder / "raw.json", SENTENCES)
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "raw.json"))
        fast.save_pretrained(folder)
        (folder / "raw.json").unlink()
