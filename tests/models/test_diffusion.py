"""Diffusion denoisers: the DDPM ε-loss, the DenoisingModel wrapper, pruning and training a UNet."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sfpk
from sfpk.data import load_dataset
from sfpk.errors import ConfigError, SfpkError
from sfpk.losses import denoise_loss, task_loss
from sfpk.models import create
from sfpk.training.optimizers import OptimizerConfig
from sfpk.training.trainer import Trainer

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from sfpk.models.diffusion import DenoisingModel, make_scheduler  # noqa: E402

SHAPE = (1, 16, 16)


def _unet() -> DenoisingModel:
    torch.manual_seed(0)
    return create("unet_tiny", num_classes=10, input_shape=SHAPE, channels=(8, 16))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, *SHAPE, generator=generator) * 2 - 1
    return [(x[i], torch.zeros(6, dtype=torch.long)) for i in range(2)]


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 10))


def test_output_and_loss_are_the_ddpm_epsilon_mse_for_fixed_t_and_noise() -> None:
    """The loss must be MSE(unet(sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, t), ε), as in DDPM."""
    model = _unet()
    x0, _ = _batches()[0]
    t = torch.tensor([0, 10, 500, 999, 3, 250])
    noise = torch.randn_like(x0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x_t = scheduler.add_noise(x0, noise, t)
    alpha = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t, alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise, atol=1e-6)
    output = model(x0, t=t, noise=noise)
    expected = F.mse_loss(model.unet(x_t, t).sample, noise)
    assert output.shape == (6, 2, *SHAPE)
    assert torch.equal(output[:, 1], noise)
    assert torch.allclose(denoise_loss(output, None), expected, atol=1e-6)
    assert task_loss("denoise") is denoise_loss


def test_loss_reductions_sum_per_image_means() -> None:
    """The Trainer's evaluation divides the summed loss by images: "sum" adds per-image means."""
    output = torch.randn(3, 2, *SHAPE)
    per_image = denoise_loss(output, reduction="none")
    assert per_image.shape == (3,)
    assert torch.allclose(denoise_loss(output, reduction="sum"), per_image.sum())
    assert torch.allclose(denoise_loss(output), per_image.mean())


def test_forward_draws_t_and_noise_from_the_global_generator() -> None:
    """Seeding torch makes a forward reproducible; consecutive forwards draw fresh noise."""
    model = _unet().eval()
    x0, _ = _batches()[0]
    torch.manual_seed(5)
    first, second = model(x0), model(x0)
    torch.manual_seed(5)
    assert torch.equal(model(x0), first)
    assert not torch.equal(first, second)


def test_timesteps_are_drawn_inside_the_given_range() -> None:
    """timesteps=(low, high) restricts t: a range of one step gives that step's output."""
    model = create("unet_tiny", num_classes=1, channels=(8, 16), timesteps=(7, 8)).eval()
    x0, _ = _batches()[0]
    torch.manual_seed(0)
    drawn = model(x0)
    torch.manual_seed(0)
    t = torch.randint(7, 8, (6,))  # the wrapper draws t first, then the noise
    noise = torch.randn_like(x0)
    assert torch.equal(t, torch.full((6,), 7))
    assert torch.allclose(drawn, model(x0, t=t, noise=noise))


@pytest.mark.parametrize(
    ("method", "options"),
    [("snip", {}), ("mag", {}), ("sfpk", {"num_steps": 3, "num_particles": 2})],
)
def test_seeded_prune_of_a_unet_is_exact_and_reproducible(method: str, options: dict) -> None:
    """Every method prunes a denoiser through denoise_loss: exact sparsity, same masks twice."""
    model, data = _unet(), _batches()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runs = [
        sfpk.prune(
            model, data, method=method, sparsity=0.5, loss_fn=denoise_loss, seed=3, **options
        )  # fmt: skip
        for _ in range(2)
    ]
    total = runs[0].total_weights()
    assert total - runs[0].kept_weights() == pytest.approx(total / 2, abs=1)
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_filter_pruning_removes_whole_conv_filters_and_keeps_conv_out() -> None:
    """structure="filter" on the UNet zeroes whole conv filters; the output conv stays whole."""
    model, data = _unet(), _batches()
    masks = sfpk.prune(model, data, method="mag", sparsity=0.3, structure="filter")
    convs = [n for n in masks if n.endswith(".weight") and len(masks.shapes[n]) == 4]
    assert convs
    removed = 0
    for name in convs:
        rows = masks[name].reshape(masks[name].shape[0], -1)
        assert bool(((rows == 0).all(1) | (rows == 1).all(1)).all())
        removed += int((rows == 0).all(1).sum())
    assert removed > 0
    assert "unet.conv_out" in masks.unpruned_outputs
    assert "unet.conv_out.weight" not in masks  # left dense: its filters are the image
    pruned = _unet()
    masks.apply(pruned)
    assert torch.isfinite(pruned(data[0][0])).all()


def test_trainer_steps_on_the_denoise_loss_reduce_it_on_a_fixed_batch() -> None:
    """Training a denoiser must lower its ε-loss (a fixed t and noise make it comparable)."""
    model = _unet()
    x0, _ = _batches()[0]
    t, noise = torch.arange(6) * 150, torch.randn_like(x0)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(denoise_loss(model(x0, t=t, noise=noise)))

    options = OptimizerConfig(optimizer="adam", lr=3e-3, weight_decay=0.0)
    trainer = Trainer(model, options, device=torch.device("cpu"), task="denoise", progress=False)
    model.eval()
    start = fixed_loss()
    torch.manual_seed(0)
    result = trainer.train_epoch([(x0, torch.zeros(6, dtype=torch.long))] * 8, lr=3e-3)
    model.eval()
    assert result.acc == 0.0 and result.loss > 0
    assert fixed_loss() < 0.9 * start


def test_digits16_holds_16x16_images_in_minus_one_one_for_the_denoise_task() -> None:
    """The embedded digits, upsampled 2x, are the denoising data: shape, range, task."""
    splits = load_dataset("digits16")
    x, _ = splits.train[0]
    assert splits.task == "denoise" and splits.input_shape == SHAPE
    assert x.shape == SHAPE and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, ::2, ::2], x[:, 1::2, 1::2])


def test_hf_loads_a_local_unet_folder_with_equal_outputs(tmp_path) -> None:
    """hf:<folder> with a saved UNet2DModel is a denoiser with the same weights."""
    model = _unet().eval()
    model.unet.save_pretrained(tmp_path)
    loaded = create(f"hf:{tmp_path}", num_classes=10).eval()
    x0, _ = _batches()[0]
    t, noise = torch.arange(6), torch.randn_like(x0)
    assert isinstance(loaded, DenoisingModel) and isinstance(loaded.unet, UNet2DModel)
    assert torch.allclose(loaded(x0, t=t, noise=noise), model(x0, t=t, noise=noise), atol=1e-6)


def test_a_unet_folder_without_config_or_with_another_class_is_refused(tmp_path) -> None:
    """A folder with no config.json, or one naming no UNet, is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="no config.json"):
        create(f"hf:{tmp_path}", num_classes=10)
    from sfpk.models.diffusion import load_unet_folder

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ConfigError, match="_class_name='VQModel'.*UNet2DModel"):
        load_unet_folder(str(tmp_path))


def test_the_denoise_task_on_a_classifier_is_refused() -> None:
    """A classifier cannot be wrapped, trained or pruned as a denoiser: clear early errors."""
    with pytest.raises(ConfigError, match="Sequential.*UNet2DModel"):
        DenoisingModel(_classifier())
    with pytest.raises(ConfigError, match="task='denoise'.*'classification'"):
        Trainer(_classifier(), OptimizerConfig(), device=torch.device("cpu"), task="denoise")
    with pytest.raises(SfpkError, match=r"\[B, 2, C, H, W\].*\(6, 10\)"):
        sfpk.prune(_classifier(), _batches(), method="snip", sparsity=0.5, loss_fn=denoise_loss)


def test_pruning_a_denoiser_under_the_default_loss_names_denoise_loss() -> None:
    """Cross-entropy on predicted noise is meaningless: refused early, naming the loss to pass."""
    model = _unet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(SfpkError, match="loss_fn=sfpk.losses.denoise_loss"):
        sfpk.prune(model, _batches(), method="snip", sparsity=0.5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_train_timesteps": 0}, "num_train_timesteps=0: must be > 0"),
        ({"num_train_timesteps": -5}, "num_train_timesteps=-5"),
        ({"timesteps": (0, 1001)}, r"timesteps=\(0, 1001\).*high <= 1000"),
        ({"timesteps": (-1, 10)}, r"timesteps=\(-1, 10\)"),
        ({"timesteps": (5, 5)}, r"timesteps=\(5, 5\)"),
        ({"beta_schedule": "cubic"}, "beta_schedule='cubic'.*linear"),
        ({"input_shape": (1, 15, 16)}, r"input_shape=\(1, 15, 16\).*divisible by 2"),
    ],
)
def test_bad_schedule_and_shape_options_name_the_value(options: dict, message: str) -> None:
    """Timesteps outside [0, T), T <= 0, unknown schedules, odd sides: early ConfigErrors."""
    with pytest.raises(ConfigError, match=message):
        create("unet_tiny", num_classes=1, channels=(8, 16), **options)


def test_missing_diffusers_names_the_extra(monkeypatch) -> None:
    """Without diffusers, a denoiser is a ConfigError naming pip install 'sfpk[diffusion]'."""
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match=r"pip install 'sfpk\[diffusion\]'"):
        make_scheduler()


def test_denoise_runs_select_the_epoch_of_lowest_validation_loss() -> None:
    """A denoiser has no accuracy: the pipelines' best epoch is the lowest validation ε-loss."""
    from sfpk.pipelines.phases import best_record

    records = [
        {"epoch": 0, "val_loss": 0.3, "val_acc": 0.0},
        {"epoch": 1, "val_loss": 0.1, "val_acc": 0.0},
        {"epoch": 2, "val_loss": 0.2, "val_acc": 0.0},
    ]
    assert best_record(records, "denoise")["epoch"] == 1
