"""Diffusion denoisers: :class:`DenoisingModel`, the ``unet_tiny`` UNet, UNet folders.

sfpk's pruners and the Trainer call ``model(inputs)`` and then ``loss_fn(output, targets)``.
A DDPM's ε-prediction loss needs more: a timestep ``t`` and a noise ``ε`` per image, the
noised image ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε`` and the UNet's call ``unet(x_t, t)``.
:class:`DenoisingModel` does all of that inside ``forward(x0)`` and returns the predicted
and the true noise stacked, ``[B, 2, C, H, W]``, so :func:`sfpk.losses.denoise_loss` (the
``"denoise"`` task's loss) is a plain function of the output and every method works unchanged.

``t`` and ``ε`` are drawn from torch's global generator on ``x0``'s device: a seeded
:func:`sfpk.prune` call (which seeds and forks that generator) draws the same ones every
time, and each forward (each particle step, each SNIP batch) draws fresh ones, as DDPM
training does. ``forward(x0, t=..., noise=...)`` fixes them (tests, evaluation).

The noise schedule is ``diffusers.DDPMScheduler``'s (default: 1000 linear-beta steps); its
``ᾱ_t`` are a non-persistent buffer, so the state dict holds the UNet's weights only
(``unet.`` prefixed). ``diffusers`` is optional: ``pip install 'sfpk[diffusion]'``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import register_model

__all__ = [
    "DenoisingModel",
    "make_scheduler",
    "unet_tiny",
    "is_unet_folder",
    "load_unet_folder",
    "UNET_CLASSES",
]

# The diffusers model classes an ``hf:`` folder's config.json may name (``_class_name``).
UNET_CLASSES: tuple[str, ...] = ("UNet2DModel",)


def import_diffusers() -> Any:
    """The ``diffusers`` module, or a ConfigError saying how to install it."""
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        raise ConfigError(
            "diffusion models (unet_tiny, hf: UNet folders) need diffusers, which is not "
            "installed; pip install 'sfpk[diffusion]'"
        ) from None


def make_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> Any:
    """A ``diffusers.DDPMScheduler`` with ``num_train_timesteps`` steps of ``beta_schedule``.

    Raises:
        ConfigError: ``num_train_timesteps`` is not a positive integer, or diffusers is
            missing or refuses the schedule name.
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise ConfigError(
            f"num_train_timesteps={num_train_timesteps!r}: must be a positive integer"
        )
    if num_train_timesteps <= 0:
        raise ConfigError(f"num_train_timesteps={num_train_timesteps}: must be > 0")
    diffusers = import_diffusers()
    try:
        return diffusers.DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule
        )
    except NotImplementedError:
        raise ConfigError(
            f"beta_schedule={beta_schedule!r}: not a DDPMScheduler schedule; choose one of "
            "linear, scaled_linear, squaredcos_cap_v2, sigmoid"
        ) from None


class DenoisingModel(nn.Module):
    """A UNet and a DDPM noise schedule: ``forward(x0) -> [B, 2, C, H, W]``.

    ``output[:, 0]`` is ``unet(x_t, t).sample``, the predicted noise, and ``output[:, 1]``
    the noise ``ε`` added to ``x0`` (no gradient flows into it), for the ``t`` drawn
    uniformly from ``timesteps`` per image.

    Args:
        unet: a ``diffusers.UNet2DModel`` (anything called ``unet(x, t)`` returning an
            object with ``.sample`` of ``x``'s shape, or that tensor).
        scheduler: a ``diffusers.DDPMScheduler`` (its ``alphas_cumprod``); None: 1000
            linear-beta steps.
        timesteps: ``(low, high)``, the range ``t`` is drawn from, ``0 <= low < high <= T``
            (``T`` the scheduler's steps); None: all of ``[0, T)``.

    Raises:
        ConfigError: ``unet`` is not a UNet (a classifier, say), or ``timesteps`` lies
            outside ``[0, T)``.
    """

    sfpk_task = "denoise"
    sfpk_output_layers = ("unet.conv_out",)  # its rows are the image channels

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any = None,
        *,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not _is_unet(unet):
            raise ConfigError(
                f"the denoise task needs a UNet denoiser called as unet(x_t, t), got "
                f"{type(unet).__name__}; choose a diffusers UNet2DModel (unet_tiny, or an "
                "hf: folder holding one); classifiers take task='classification'"
            )
        scheduler = make_scheduler() if scheduler is None else scheduler
        alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        steps = len(alphas)
        low, high = (0, steps) if timesteps is None else _check_range(timesteps, steps)
        self.unet = unet
        self.num_train_timesteps = steps
        self.timesteps = (low, high)
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    def noised(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε``, per image."""
        alpha = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        alpha = alpha.view(-1, *([1] * (x0.dim() - 1)))
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise

    def forward(self, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        if t is None:
            t = torch.randint(*self.timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        out = self.unet(self.noised(x0, t, noise), t)
        predicted = out if isinstance(out, Tensor) else out.sample
        return torch.stack([predicted, noise.to(predicted.dtype)], dim=1)


def _is_unet(module: nn.Module) -> bool:
    names = {cls.__name__ for cls in type(module).__mro__}
    return bool(names & set(UNET_CLASSES)) or type(module).__name__.startswith("UNet")


def _check_range(timesteps: Sequence[int], steps: int) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in timesteps)
    except (TypeError, ValueError):
        raise ConfigError(f"timesteps={timesteps!r}: must be two integers (low, high)") from None
    if not 0 <= low < high <= steps:
        raise ConfigError(
            f"timesteps=({low}, {high}): must satisfy 0 <= low < high <= {steps} "
            f"(t is drawn from [low, high), inside the schedule's [0, {steps}))"
        )
    return low, high


@register_model
def unet_tiny(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
    channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    timesteps: Sequence[int] | None = None,
) -> nn.Module:
    """A small ``diffusers.UNet2DModel`` denoiser for 16×16 grey images, in a DenoisingModel.

    Args:
        num_classes: ignored (a denoiser has no classes; accepted for the registry).
        input_shape: ``(C, H, W)``, default ``(1, 16, 16)``; ``H`` and ``W`` must be
            divisible by ``2 ** (len(channels) - 1)`` (one halving per extra level).
        channels: the widths of the UNet's levels (``block_out_channels``), each a
            multiple of 8 (its GroupNorm groups).
        layers_per_block: ResNet blocks per level.
        num_train_timesteps, beta_schedule: the DDPM schedule (:func:`make_scheduler`).
        timesteps: the ``[low, high)`` range of ``t`` (:class:`DenoisingModel`).

    Raises:
        ConfigError: a shape or width the UNet cannot take, a bad schedule, or no diffusers.
    """
    del num_classes
    shape = tuple(input_shape) if input_shape is not None else (1, 16, 16)
    widths = tuple(int(c) for c in channels)
    if len(shape) != 3:
        raise ConfigError(f"unet_tiny: input_shape={shape}: must be (C, H, W)")
    if not widths or any(c <= 0 or c % 8 for c in widths):
        raise ConfigError(f"unet_tiny: channels={widths}: must be positive multiples of 8")
    factor = 2 ** (len(widths) - 1)
    if shape[1] % factor or shape[2] % factor:
        raise ConfigError(
            f"unet_tiny: input_shape={shape}: H and W must be divisible by {factor} "
            f"for {len(widths)} levels (channels={widths})"
        )
    scheduler = make_scheduler(num_train_timesteps, beta_schedule)
    diffusers = import_diffusers()
    unet = diffusers.UNet2DModel(
        sample_size=shape[1:],
        in_channels=shape[0],
        out_channels=shape[0],
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths),
        norm_num_groups=8,
    )
    return DenoisingModel(unet, scheduler, timesteps=timesteps).train()


def _class_name(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def is_unet_folder(name: str) -> bool:
    """Whether ``name`` is a folder whose config.json names a diffusers UNet class."""
    path = Path(name).expanduser()
    return path.is_dir() and _class_name(path) in UNET_CLASSES


def load_unet_folder(
    name: str,
    *,
    num_train_timesteps: int | None = None,
    beta_schedule: str | None = None,
    timesteps: Sequence[int] | None = None,
) -> DenoisingModel:
    """``UNet2DModel.from_pretrained(folder)`` (nothing downloaded) in a DenoisingModel.

    The schedule is the folder's ``scheduler_config.json`` when it has one and no option
    overrides it, else :func:`make_scheduler` (1000 linear-beta steps by default).

    Raises:
        ConfigError: the folder has no config.json, it names no UNet, or it cannot be loaded.
    """
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"hf:{name}: the folder has no config.json (write the UNet with save_pretrained)"
        )
    found = _class_name(path)
    if found not in UNET_CLASSES:
        raise ConfigError(
            f"hf:{name}: config.json names _class_name={found!r}; diffusion folders must "
            f"hold one of {', '.join(UNET_CLASSES)}"
        )
    diffusers = import_diffusers()
    try:
        unet = getattr(diffusers, found).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"hf:{name}: cannot load the {found} ({first})") from None
    own = path / "scheduler_config.json"
    if own.is_file() and num_train_timesteps is None and beta_schedule is None:
        scheduler = diffusers.DDPMScheduler.from_pretrained(str(path), local_files_only=True)
    else:
        scheduler = make_scheduler(
            1000 if num_train_timesteps is None else num_train_timesteps,
            beta_schedule or "linear",
        )
    model = DenoisingModel(unet.float(), scheduler, timesteps=timesteps)
    model.sfpk_pretrained = True
    return model.train()
