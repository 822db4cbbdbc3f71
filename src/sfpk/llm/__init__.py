"""Layer-wise pruning of decoder language models (issue #22), the way LLM users prune.

Load a causal LM, draw calibration windows from its training text
(:func:`sample_calibration`), prune it block by block with each linear layer against its
own inputs (:func:`prune_layerwise`: ``mag``, ``wanda``, ``sparsegpt``, ``spode``, ``sfpk``;
unstructured per output row or N:M), and report perplexity on held-out text
(:func:`perplexity`). See docs/llm.md.

Example:
    >>> from sfpk.llm import perplexity, prune_layerwise, sample_calibration
    >>> calib = sample_calibration(train_ids, num_samples=128, seqlen=1024, seed=0)
    >>> result = prune_layerwise(model, calib, method="sparsegpt", sparsity=0.5)
    >>> perplexity(model, test_ids, seqlen=1024)  # doctest: +SKIP
"""

from __future__ import annotations

from .blocks import Decoder as Decoder
from .blocks import find_decoder as find_decoder
from .calibration import check_seqlen as check_seqlen
from .calibration import sample_calibration as sample_calibration
from .methods import METHODS as METHODS
from .methods import SparseGPTOptions as SparseGPTOptions
from .particles import ParticleOptions as ParticleOptions
from .perplexity import perplexity as perplexity
from .sequential import LayerwiseResult as LayerwiseResult
from .sequential import prune_layerwise as prune_layerwise
from .sparsegpt import sparsegpt as sparsegpt

__all__ = [
    "METHODS",
    "Decoder",
    "LayerwiseResult",
    "ParticleOptions",
    "SparseGPTOptions",
    "check_seqlen",
    "find_decoder",
    "perplexity",
    "prune_layerwise",
    "sample_calibration",
    "sparsegpt",
]
