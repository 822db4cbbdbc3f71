"""Translate the reference implementation's command lines into sfpk's native config.

``sfpk reference <flags of the reference's main.py>`` accepts the command lines of the SFPK
reference README (``python main.py`` replaced by ``sfpk reference``) with the reference's
meaning of every flag, and converts them once, here, at the edge:

* ``--sparsity`` is the fraction of prunable entries **kept** (density) in the reference;
  sfpk's ``prune.sparsity`` is the fraction removed: ``sparsity = 1 - density``.
* ``--structural`` forces per-layer scope and the channel density ``sqrt(density)``
  (method spec §1.4); sfpk then removes ``1 - sqrt(density)`` of every layer's channels
  (``--mask_dim 1``, the default) or filters (``--mask_dim 0``).
* The reference prunes linear biases, so ``prune.include_bias`` is turned on, and its
  filter masks include the classifier's class rows, so ``prune.protect_output`` is off.
* The reference's SynFlow schedule is pipeline rounds (``--prn_epochs``) of one scoring each.
* ``--exp iterative`` trains with the reference's ``load_optimizer`` defaults (momentum 0 for
  ``sgd``, weight decay 5e-5, or 0.05 for ``adamw``): it ignores ``--momentum`` and
  ``--weight_decay`` (spec §5.3). ``--label_smoothing`` (default 0.1) applies to ImageNet only.

Flags that are not given take sfpk's defaults, which are the reference README's recipe
(method spec §9.1), not the reference's argparse defaults. Flags that cannot be honoured are
an error naming them; flags that had no effect in the reference either are accepted with a
note. Every flag is mapped in the single table :data:`FLAGS` (:mod:`sfpk.cli.reference_flags`,
with its parser); this module holds the rules between flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..config.core import PIPELINES, DataConfig, ModelConfig, Pipeline, TrainConfig
from ..data import dataset_spec
from ..errors import ConfigError
from ..models import create_model
from ..models.hf import HF_PREFIX
from .flags import args_for, used_by
from .reference_flags import (
    FLAGS,
    HF_CHECKPOINTS,
    MODELS,
    OPTIMIZERS,
    PARTICLE_FLAGS,
    PRUNERS,
    SFPK_ONLY_FLAGS,
    parse_reference_flags,
)

# FLAGS, MODELS and HF_CHECKPOINTS live in .reference_flags and stay importable from here.
__all__ = ["FLAGS", "MODELS", "HF_CHECKPOINTS", "Translation", "translate", "native_command"]


@dataclass
class Translation:
    """The native equivalent of one reference command line."""

    pipeline: Pipeline
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def translate(argv: Sequence[str]) -> Translation:
    """Map a reference command line to (pipeline, dotted config overrides, notes).

    Raises:
        ConfigError: an unknown or unsupported flag (all of them are named), or a value the
            reference would reject (e.g. ``--sparsity`` outside (0, 1)).
    """
    given = parse_reference_flags(argv)
    refused = [f"--{k} ({FLAGS[k].unsupported})" for k in given if FLAGS[k].unsupported]
    if refused:
        raise ConfigError(f"sfpk reference: unsupported flag(s): {'; '.join(refused)}")
    pipeline = given.get("exp", "oneshot")
    if pipeline not in PIPELINES:
        raise ConfigError(f"--exp {pipeline!r} is not implemented; choose {', '.join(PIPELINES)}")
    out = Translation(cast(Pipeline, pipeline))
    for name, value in given.items():
        flag = FLAGS[name]
        if flag.note:
            out.notes.append(f"--{name}: accepted, {flag.note}")
        if flag.target is None:
            continue
        value = flag.convert(value) if flag.convert else value
        if flag.target.startswith("option:"):
            out.overrides.setdefault("prune.options", {})[flag.target[7:]] = value
        else:
            out.overrides[flag.target] = value
    _pruning(given, out)
    _sparsity(given, out)
    if given.get("free_conv1") or given.get("free_lastfc"):
        out.overrides["prune.exclude"] = _freed_parameters(given, out)
    _training(given, out)
    _fit_warmup(given, out)
    _device_and_weights(given, out)
    return out


def _pruning(given: dict[str, Any], out: Translation) -> None:
    pruner = given.get("pruner", "SFPK")
    if pruner not in PRUNERS:
        raise ConfigError(
            f"--pruner {pruner!r} is not supported; choose one of {', '.join(PRUNERS)}"
        )
    method = PRUNERS[pruner]
    out.overrides["prune.method"] = method
    options = out.overrides.get("prune.options", {})
    particle = [k for k in given if k in PARTICLE_FLAGS] if method not in ("sfpk", "spode") else []
    sfpk_only = [k for k in given if k in SFPK_ONLY_FLAGS] if method == "spode" else []
    for key in [*particle, *sfpk_only]:
        out.notes.append(f"--{key}: accepted, it does not apply to --pruner {pruner}")
        options.pop(PARTICLE_FLAGS[key], None)
    if method == "synflow":  # the reference's SynFlow: one scoring per pipeline round
        options.update(rounds=1, train_mode=True)
    if method in ("snip", "grasp"):  # the reference scores on the whole pruning loader
        options.update(batches=None)
    if method in ("sfpk", "spode"):
        options.setdefault("early_stop", True)
    if options:
        out.overrides["prune.options"] = options
    out.overrides["prune.include_bias"] = True
    out.overrides["prune.protect_output"] = False  # its filter masks cut the class rows too
    for key, expected in (
        ("energy_option", "CE"),
        ("mask_option", "one"),
        ("mask_proc_score_option", "Id"),
        ("prn_schedule", "exponential"),
    ):
        if key in given and given[key] != expected:
            raise ConfigError(f"--{key} {given[key]!r} is not supported; only {expected!r}")


def _sparsity(given: dict[str, Any], out: Translation) -> None:
    """The reference's density (fraction KEPT) as sfpk's sparsity, structure and scope."""
    density = given.get("sparsity", 0.7)  # the reference's argparse default
    if not 0.0 < density < 1.0:
        raise ConfigError(
            f"--sparsity {density!r} must be in (0, 1) (in the reference it is the fraction KEPT)"
        )
    if given.get("structural"):
        mask_dim = given.get("mask_dim", 1)
        if mask_dim not in (0, 1):
            raise ConfigError(f"--mask_dim {mask_dim!r} must be 0 (filters) or 1 (channels)")
        out.overrides["prune.structure"] = "filter" if mask_dim == 0 else "channel"
        out.overrides["prune.scope"] = "local"
        out.overrides["prune.sparsity"] = round(1.0 - math.sqrt(density), 12)
        out.notes.append(
            f"--structural: per-layer channel density sqrt({density}) = {math.sqrt(density):.4f}"
        )
    else:
        if "mask_dim" in given:
            out.notes.append("--mask_dim: accepted, it only applies with --structural")
        out.overrides["prune.sparsity"] = round(1.0 - density, 12)  # 1 - 0.7 = 0.30000000000000004


def _freed_parameters(given: dict[str, Any], out: Translation) -> list[str]:
    """Parameters freed by ``--free_conv1`` (first conv) and ``--free_lastfc`` (last linear)."""
    dataset = out.overrides.get("data.dataset", DataConfig().dataset)
    model = create_model(
        out.overrides.get("model.name", ModelConfig().name),
        num_classes=10,
        input_shape=dataset_spec(dataset).input_shape,
    )
    names: list[str] = []
    modules = list(model.named_modules())
    if given.get("free_conv1"):
        names += [f"{n}.weight" for n, m in modules if isinstance(m, nn.Conv1d | nn.Conv2d)][:1]
    if given.get("free_lastfc"):
        last = [(n, m) for n, m in modules if isinstance(m, nn.Linear)][-1:]
        for name, layer in last:
            names += [f"{name}.weight"] + ([f"{name}.bias"] if layer.bias is not None else [])
    return names


def _training(given: dict[str, Any], out: Translation) -> None:
    if "opt" in given:
        if given["opt"] not in OPTIMIZERS:
            raise ConfigError(
                f"--opt {given['opt']!r} is not supported; choose one of {', '.join(OPTIMIZERS)}"
            )
        optimizer, nesterov = OPTIMIZERS[given["opt"]]
        out.overrides["train.optimizer"] = optimizer
        out.overrides["train.nesterov"] = nesterov
    if "bsz" in given:
        out.overrides["data.eval_batch_size"] = given["bsz"]
        out.overrides["pretrain.batch_size"] = given["bsz"]
    if out.pipeline == "iterative" and ("warmup_epochs" in given or "cold_start_lr" in given):
        out.notes.append("--warmup_epochs/--cold_start_lr: the reference's iterative ignores them")
        out.overrides.pop("train.warmup_epochs", None)
        out.overrides.pop("train.cold_start_lr", None)
    if out.pipeline == "iterative":
        out.overrides["train.warmup_epochs"] = 0
        _iterative_optimizer(given, out)
    _label_smoothing(given, out)


def _fit_warmup(given: dict[str, Any], out: Translation) -> None:
    """Shorten sfpk's default warm-up when a one-shot ``--ft_epochs`` budget is too small.

    sfpk warms up for ``train.warmup_epochs`` (5 by default) of the fine-tuning epochs; a
    pasted ``--ft_epochs 1`` without ``--warmup_epochs`` would not fit. The warm-up is cut
    to the epochs left after ``--fixed_lr_epochs``, with a note. A warm-up given on the
    command line is kept (and the config's error explains the budget).
    """
    if out.pipeline != "oneshot" or "warmup_epochs" in given:
        return
    defaults = TrainConfig()
    epochs = out.overrides.get("train.epochs", defaults.epochs)
    fixed = out.overrides.get("train.fixed_lr_epochs", defaults.fixed_lr_epochs)
    warmup = out.overrides.get("train.warmup_epochs", defaults.warmup_epochs)
    if isinstance(epochs, int) and isinstance(fixed, int) and warmup + fixed > epochs:
        fitted = max(0, epochs - fixed)
        out.overrides["train.warmup_epochs"] = fitted
        out.notes.append(
            f"--ft_epochs {epochs}: sfpk's default {warmup}-epoch warm-up does not fit; "
            f"warm-up shortened to {fitted} epoch(s) (set --warmup_epochs to choose)"
        )


def _iterative_optimizer(given: dict[str, Any], out: Translation) -> None:
    """The reference's iterative uses ``load_optimizer``'s own defaults (spec §5.3, §8.7)."""
    for key in ("momentum", "weight_decay"):
        if key in given:
            out.notes.append(f"--{key}: accepted, the reference's iterative ignores it")
    opt = given.get("opt", "sgd")
    out.overrides["train.weight_decay"] = 0.05 if opt == "adamw" else 5e-5
    if opt == "sgd":
        out.overrides["train.momentum"] = 0.0
    else:
        out.overrides.pop("train.momentum", None)


def _label_smoothing(given: dict[str, Any], out: Translation) -> None:
    """The reference smooths the training labels (default 0.1) on ImageNet only (§5.2)."""
    dataset = out.overrides.get("data.dataset", DataConfig().dataset)
    if dataset == "imagenet":
        out.overrides["train.label_smoothing"] = given.get("label_smoothing", 0.1)
    elif "label_smoothing" in given:
        out.notes.append("--label_smoothing: accepted, the reference uses it on ImageNet only")
        out.overrides.pop("train.label_smoothing", None)


def _device_and_weights(given: dict[str, Any], out: Translation) -> None:
    if "cuda_idx" in given:
        if torch.cuda.is_available():
            out.overrides["run.device"] = f"cuda:{given['cuda_idx']}"
        else:
            out.overrides["run.device"] = "cpu"
            out.notes.append("--cuda_idx: no CUDA device here, running on the CPU")
    if given.get("use_init") and out.pipeline != "pretrain":
        raise ConfigError(
            "--use_init with --exp oneshot/iterative (pruning a random initialisation) is not "
            "supported; give pretrained weights with --model_dir"
        )
    if "model_dir" in given:
        # flags not given take sfpk's defaults, as for the run itself
        data = out.overrides.get("data.dataset", DataConfig().dataset)
        model = out.overrides.get("model.name", ModelConfig().name)
        if model.partition(":")[0] == HF_PREFIX:  # as in the reference, weights come with it
            out.notes.append(f"--model_dir: accepted, {model} loads its own pretrained weights")
            return
        path = Path(given["model_dir"]) / "pretrained" / data / f"{model}.pt"
        if out.pipeline != "pretrain":
            if not path.is_file():
                raise ConfigError(
                    f"--model_dir: expected the pretrained weights at {str(path)!r} (the "
                    "reference's layout <model_dir>/pretrained/<data>/<model>.pt)"
                )
            out.overrides["model.checkpoint"] = str(path)


def native_command(translation: Translation) -> list[str]:
    """The equivalent ``sfpk <pipeline> ...`` argument list."""
    # Keys the pipeline does not read (the iterative warm-up of 0, which keeps config.yaml
    # explicit) are left out: the native CLI refuses flags that have no effect.
    used = {k: v for k, v in translation.overrides.items() if translation.pipeline in used_by(k)}
    return ["sfpk", translation.pipeline, *args_for(used)]
