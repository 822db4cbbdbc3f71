"""The reference implementation's ``main.py`` flags: one table, and its parser.

:data:`FLAGS` names every flag of the reference's argparse, its kind, and where its value goes
in sfpk's config (a dotted key, a method option, or nowhere: handled by a rule of
:func:`sfpk.cli.reference.translate`, accepted with a note, or refused with a reason).
:func:`parse_reference_flags` reads a command line with that table. The reference's names
(``--pruner SFPK``, ``--opt momentum``, ``--model deit_small``) map to sfpk's through
:data:`PRUNERS`, :data:`OPTIMIZERS` and :data:`MODELS`. What the values mean is decided in
:mod:`sfpk.cli.reference`; this module only knows the flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import ConfigError
from ..models.hf import HF_PREFIX

__all__ = [
    "FLAGS",
    "Flag",
    "HF_CHECKPOINTS",
    "MODELS",
    "OPTIMIZERS",
    "PARTICLE_FLAGS",
    "PRUNERS",
    "SFPK_ONLY_FLAGS",
    "parse_reference_flags",
]

PRUNERS = {
    "Rand": "rand",
    "Randn": "rand",
    "Mag": "mag",
    "SNIP": "snip",
    "GraSP": "grasp",
    "SynFlow": "synflow",
    "SpODE": "spode",
    "SFPK": "sfpk",
}
OPTIMIZERS = {
    "sgd": ("sgd", False),
    "momentum": ("sgd", True),
    "adam": ("adam", False),
    "adamw": ("adamw", False),
}
# The reference's pretrained ImageNet transformers (``Utils/load.py``: DeiT from torch.hub's
# facebookresearch/deit, Swin from torchvision) as Hugging Face checkpoints: the DeiT ones
# hold the same weights, the Swin ones Microsoft's (torchvision trained its own). ``vit_b_16``
# (torchvision's name) has no ``--model`` entry in the reference; it is the ImageNet-1k ViT-B/16.
# The checkpoint must be in the Hub cache (docs/models.md, "Transformers").
HF_CHECKPOINTS = {
    "vit_b_16": "google/vit-base-patch16-224",
    "deit_tiny": "facebook/deit-tiny-patch16-224",
    "deit_small": "facebook/deit-small-patch16-224",
    "deit_base": "facebook/deit-base-patch16-224",
    "deit_tiny_distilled": "facebook/deit-tiny-distilled-patch16-224",
    "deit_small_distilled": "facebook/deit-small-distilled-patch16-224",
    "deit_base_distilled": "facebook/deit-base-distilled-patch16-224",
    "swin_t": "microsoft/swin-tiny-patch4-window7-224",
    "swin_s": "microsoft/swin-small-patch4-window7-224",
}
MODELS = {
    "resnet50v2": "resnet50",  # V2 weights come from --model_dir / --checkpoint
    **{name: f"{HF_PREFIX}:{checkpoint}" for name, checkpoint in HF_CHECKPOINTS.items()},
}


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in str(text).split(",") if v.strip()]


@dataclass(frozen=True)
class Flag:
    """One reference flag: its argparse kind and where its value goes in sfpk."""

    kind: Any = str  # a type, "store_true", or a callable parser
    target: str | None = None  # dotted config key, "option:<name>", or None (handled apart)
    convert: Callable[[Any], Any] | None = None
    note: str | None = None  # accepted without effect, with this note
    unsupported: str | None = None  # rejected with this reason


_NOOP = "had no effect in the reference either"
FLAGS: dict[str, Flag] = {
    "exp": Flag(str, None),
    "seed": Flag(int, "run.seed"),
    "cuda_idx": Flag(int, None),
    "num_workers": Flag(int, "data.num_workers"),
    "data": Flag(str, "data.dataset"),
    "data_dir": Flag(str, "data.data_dir"),
    "model_dir": Flag(str, None),
    "out_dir": Flag(str, "run.out"),
    "bsz": Flag(int, "train.batch_size"),
    "model": Flag(str, "model.name", lambda v: MODELS.get(v, v)),
    "use_init": Flag("store_true", None),
    "opt": Flag(str, None),
    "lr": Flag(float, "train.lr"),
    "lr_min": Flag(float, "train.lr_min"),
    "lr_scheduler": Flag(str, None, note=f"only cosine exists; the flag {_NOOP}"),
    "lr_drop_rate": Flag(float, None, note=_NOOP),
    "lr_milestones": Flag(str, None, note=_NOOP),
    "tune_per_prn": Flag(_ints, "train.round_epochs"),
    "itr_lr": Flag(_floats, "train.round_lr"),
    "itr_lr_end": Flag(_floats, "train.round_lr_end"),
    "weight_decay": Flag(float, "train.weight_decay"),
    "momentum": Flag(float, "train.momentum"),
    "label_smoothing": Flag(float, "train.label_smoothing"),
    "n_grad_accum": Flag(int, "train.grad_accum_steps"),
    "grad_n_accum": Flag(int, "train.grad_accum_steps"),  # the README's spelling
    "grad_clip": Flag(float, "train.grad_clip"),
    "pre_epochs": Flag(int, "pretrain.epochs"),
    "prn_epochs": Flag(int, "prune.rounds"),
    "ft_epochs": Flag(int, "train.epochs"),
    "fixed_lr_epochs": Flag(int, "train.fixed_lr_epochs"),
    "warmup_epochs": Flag(int, "train.warmup_epochs"),
    "cold_start_lr": Flag(float, "train.cold_start_lr"),
    "pruner": Flag(str, None),
    "structural": Flag("store_true", None),
    "mask_dim": Flag(int, None),
    "prn_scope": Flag(str, "prune.scope"),
    "prn_schedule": Flag(str, None),
    "sparsity": Flag(float, None),
    "free_bn": Flag("store_true", None, note="BatchNorm is never pruned"),
    "free_Id": Flag("store_true", None, note="identity shortcuts are never pruned"),
    "free_bias": Flag("store_true", None, note="conv biases are never pruned"),
    "free_conv1": Flag("store_true", None),
    "free_lastfc": Flag("store_true", None),
    "N": Flag(int, "option:num_steps"),
    "r": Flag(float, "option:radius_ratio"),
    "ode_scope": Flag(str, "option:ode_scope"),
    "energy_option": Flag(str, None),
    "sparsity_option": Flag(str, "option:size_functional"),
    "score_option": Flag(str, "option:score"),
    "mask_option": Flag(str, None),
    "schedule": Flag(str, "option:dt_schedule", lambda v: {"adaLin": "adalin"}.get(v, v)),
    "rt_schedule": Flag(str, "option:radius_schedule"),
    "mom": Flag(float, "option:momentum"),
    "mask_proc_option": Flag(str, "option:processor"),
    "mask_proc_eps": Flag(float, "option:processor_eps"),
    "mask_proc_ratio": Flag(float, "option:processor_ratio"),
    "mask_proc_score_option": Flag(str, None),
    "mask_proc_mxp": Flag("store_true", None, note="ranking by |m*theta| is the default"),
    "sfpk_n_mask": Flag(int, "option:num_particles"),
    "sfpk_repl_mode": Flag(str, "option:repulsion"),
    "sfpk_repl_lam": Flag(float, "option:repulsion_weight"),
    "sfpk_repl_weighted": Flag("store_true", None, note="the weighted kernel is the default"),
    "sfpk_vote_ratio": Flag(float, "option:vote_ratio"),
    "sfpk_vote_mode": Flag(str, "option:vote"),
    "save_ckpt": Flag("store_true", None, note="sfpk always saves model and masks"),
    "description": Flag(str, None, note="run names come from --out_dir"),
    "debug": Flag("store_true", None, note=_NOOP),
    "use_wandb": Flag("store_true", None, unsupported="W&B logging; use --tensorboard"),
    "resume_time_stamp": Flag(str, None, unsupported="use `sfpk resume RUN_DIR`"),
    "force_re_prune": Flag("store_true", None, note=_NOOP),
    "use_baseline": Flag("store_true", None, note=_NOOP),
    "ckpt_freq": Flag(int, None, note="checkpoints are written every epoch"),
    "save_dist": Flag("store_true", None, unsupported="per-particle distance dumps"),
}
# Flags that set a method option are the particle engine's (SFPK and SpODE), flag -> option;
# those named sfpk_* apply to SFPK only.
PARTICLE_FLAGS = {
    name: flag.target.removeprefix("option:")
    for name, flag in FLAGS.items()
    if flag.target is not None and flag.target.startswith("option:")
}
SFPK_ONLY_FLAGS = {name for name in PARTICLE_FLAGS if name.startswith("sfpk_")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # raise instead of exiting
        raise ConfigError(f"sfpk reference: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfpk reference", add_help=False, allow_abbrev=False)
    for name, flag in FLAGS.items():
        if flag.kind == "store_true":
            parser.add_argument(f"--{name}", dest=name, action="store_true", default=None)
        else:
            parser.add_argument(f"--{name}", dest=name, type=flag.kind, default=None)
    return parser


def _split_unknown(argv: Sequence[str]) -> list[str]:
    known = {f"--{n}" for n in FLAGS}
    return [
        a.split("=", 1)[0] for a in argv if a.startswith("--") and a.split("=", 1)[0] not in known
    ]


def parse_reference_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The flags given on a reference command line, ``{name: value}`` (absent ones left out).

    Raises:
        ConfigError: an unknown flag (all of them are named), or a value argparse rejects.
    """
    unknown = _split_unknown(argv)
    if unknown:
        raise ConfigError(
            f"sfpk reference: unknown reference flag(s) {', '.join(unknown)}; "
            "see the reference README's flags (`sfpk reference --help`)"
        )
    return {k: v for k, v in vars(_parser().parse_args(list(argv))).items() if v is not None}
