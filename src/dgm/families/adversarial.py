"""Adversarial training as a family (``model.kind = "gan"``): the generator and discriminator
of ``gan.architecture``, the loss of ``gan.loss``, and
:class:`dgm.methods.adversarial.AdversarialMethod` on the core. A loaded run holds the
generator, and AIS evaluates it under Wu et al. 2017's Gaussian observation model
(``gan.observation_scale``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dgm.config import Config
from dgm.data.arrays import Data
from dgm.errors import UsageError
from dgm.families.base import Family
from dgm.files import atomic_write
from dgm.methods.adversarial import (
    WGANGP,
    AdversarialLoss,
    AdversarialMethod,
    Minimax,
    NonSaturating,
)
from dgm.methods.base import Method
from dgm.models.gan import (
    DCGANDiscriminator,
    DCGANGenerator,
    Generator,
    MLPDiscriminator,
    MLPGenerator,
    ObservedGenerator,
)

#: the fixed-noise samples of every epoch (the first PROGRESS_SAMPLES of the 64), one row each
PROGRESS = "fixed_noise.safetensors"
PROGRESS_SAMPLES = 8

NORMS = {"batch": nn.BatchNorm2d, "layer": lambda c: nn.GroupNorm(1, c), "none": None}


def build_generator(config: Config, data_dim: int) -> Generator:
    gc, d = config.gan, config.model.latent_dim
    if gc.architecture == "mlp":
        return MLPGenerator(d, gc.hidden, data_dim, "relu")
    return DCGANGenerator(d, widths=(2 * gc.channels, gc.channels))


def build_discriminator(config: Config, data_dim: int) -> nn.Module:
    gc = config.gan
    if gc.architecture == "mlp":
        return MLPDiscriminator(list(reversed(gc.hidden)), data_dim, "leaky_relu")
    return DCGANDiscriminator(widths=(gc.channels, 2 * gc.channels), norm=NORMS[gc.resolved_norm()])


def build_loss(config: Config) -> AdversarialLoss:
    gc = config.gan
    if gc.loss == "wgan-gp":
        return WGANGP(lam=gc.penalty, critic_steps=gc.resolved_critic_steps())
    return Minimax() if gc.loss == "minimax" else NonSaturating()


def _check_images(config: Config, data_dim: int) -> None:
    if config.gan.architecture == "dcgan" and data_dim != 784:
        raise UsageError(
            f"gan.architecture = 'dcgan' is sized for 28 x 28 images; these have {data_dim} "
            "pixels: use gan.architecture = 'mlp'"
        )


class Adversarial(Family):
    kind = "gan"
    modules = ("generator",)
    provides = frozenset({"ais"})
    evaluation = "ais"
    sampler_has_steps = False
    curves = (
        ("loss per example", ("train_d_loss", "train_g_loss", "test_d_loss", "test_g_loss")),
        ("WGAN-GP's critic", ("train_wasserstein", "test_wasserstein", "train_penalty")),
    )

    def method(self, config: Config, data: Data, device: torch.device) -> Method:
        dim = data.x_train.shape[1]
        _check_images(config, dim)
        tc = config.train
        return AdversarialMethod(
            build_generator(config, dim),
            build_discriminator(config, dim),
            build_loss(config),
            config.model.latent_dim,
            lr=tc.lr,
            betas=tc.betas,
            critic_steps=config.gan.resolved_critic_steps(),
            device=device,
            seed=tc.seed,
            eval_batch_size=tc.eval_batch_size,
        )

    def model(self, config: Config, data: Data) -> nn.Module:
        _check_images(config, data.x_train.shape[1])
        return build_generator(config, data.x_train.shape[1])

    def trained_model(self, method: Method) -> nn.Module:
        return method.generator  # type: ignore[attr-defined]

    def on_epoch(self, method: Method, run_dir: Path, epoch: int) -> list[Path]:
        """Append this epoch's fixed-noise samples to ``fixed_noise.safetensors`` (an epoch
        trained again after a resume replaces its row)."""
        path = run_dir / PROGRESS
        rows = load_file(str(path)) if path.is_file() else {}
        rows = {k: v for k, v in rows.items() if int(k.split("-")[1]) < epoch}
        samples = method.fixed_samples()[:PROGRESS_SAMPLES]  # type: ignore[attr-defined]
        rows[f"epoch-{epoch:04d}"] = (samples.cpu() * 255).round().to(torch.uint8)
        atomic_write(path, lambda p: save_file(rows, str(p)))
        return [path]

    def figures(
        self, config: Config, method: Method, data: Data, run_dir: Path, rows: list[dict[str, Any]]
    ) -> list[Path]:
        from dgm.plots import save_grid, save_progress

        written = super().figures(config, method, data, run_dir, rows)
        # samples.png: the 64 fixed latent vectors, the same images as the progress rows
        save_grid(method.fixed_samples(), run_dir / "samples.png", data.image_shape)  # type: ignore[attr-defined]
        path = run_dir / PROGRESS
        if path.is_file():
            saved = load_file(str(path))
            epochs = sorted(saved)
            images = torch.stack([saved[k].float() / 255 for k in epochs])  # (E, 8, D)
            written.append(run_dir / "progress.png")
            save_progress(
                images, [int(k.split("-")[1]) for k in epochs], written[-1], data.image_shape
            )
        return written

    def samples_title(self, config: Config) -> str:
        return "generated by the GAN (x = G(z))"

    def annealed_model(self, model: nn.Module, config: Config, scale: float | None) -> nn.Module:
        """The generator with Wu et al. 2017's observation model N(G(z), scale^2 I) (default
        ``gan.observation_scale``)."""
        scale = config.gan.observation_scale if scale is None else scale
        if not (isinstance(scale, int | float) and scale > 0):
            raise UsageError(f"--scale {scale}: expected a positive sigma")
        return ObservedGenerator(model, float(scale))

    def networks(self, config: Config, data_dim: int) -> list[tuple[str, str, nn.Module]]:
        with torch.device("meta"):
            return [
                (
                    "generator",
                    "gan.architecture, gan.channels, model.latent_dim",
                    build_generator(config, data_dim),
                ),
                (
                    "discriminator",
                    "gan.architecture, gan.channels",
                    build_discriminator(config, data_dim),
                ),
            ]

    def activation_floats(self, config: Config, data_dim: int, batch: int) -> int:
        gc = config.gan
        if gc.architecture == "mlp":
            per = 2 * sum(gc.hidden) + 3 * 784
        else:  # the feature maps of both nets, kept for backward (x2 for norm and activation)
            c = gc.channels
            per = 2 * (2 * c * 49 + c * 196 + 784) + 2 * (c * 196 + 2 * c * 49) + 784
        # a critic update holds D on real and fake (and WGAN-GP's interpolates, twice over)
        return batch * per * (4 if gc.loss == "wgan-gp" else 2)
