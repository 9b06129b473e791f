r"""Generators and discriminators for adversarial training (:mod:`dgm.methods.adversarial`).

A generator is an implicit model: z ~ p(z) = N(0, I), x = G(z), pixels in [0, 1]. It has no
density over x; :meth:`Generator.observation` adds one, the Gaussian observation model

    p(x | z) = N(x; G(z), sigma^2 I)

of Wu et al. 2017 ("On the quantitative analysis of decoder-based generative models"), under
which annealed importance sampling estimates log p(x). A discriminator maps x to one logit
per example: D(x) = sigmoid(logit) for the minimax and non-saturating losses, the logit itself
as the critic of WGAN-GP.

Images are flat ``(B, D)`` at every interface (D = 784 for MNIST); the convolutional nets
reshape to ``(B, 1, 28, 28)`` inside.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from dgm.distributions import StandardNormal
from dgm.nn import MLP

#: a normalization layer for ``c`` channels (``nn.BatchNorm2d``, ``lambda c: nn.GroupNorm(1, c)``)
Norm = Callable[[int], nn.Module]


class Generator(nn.Module, ABC):
    r"""x = G(z) with z ~ N(0, I_d), d = ``latent_dim``; images ``(B, data_dim)`` in [0, 1].

    Subclasses define :meth:`logits` ``(B, d) -> (B, data_dim)``; ``G(z) = sigmoid(logits(z))``.
    """

    def __init__(self, latent_dim: int, data_dim: int) -> None:
        super().__init__()
        self.latent_dim, self.data_dim = latent_dim, data_dim
        # buffers follow the module to its device and dtype; not saved (persistent=False)
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def prior(self) -> Distribution:
        """p(z) = N(0, I) over ``latent_dim`` dimensions (event shape ``(latent_dim,)``)."""
        return StandardNormal(self.loc, self.scale)

    @abstractmethod
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid output, ``(B, latent_dim) -> (B, data_dim)``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) = sigmoid(logits(z)): ``(..., latent_dim) -> (..., data_dim)``, in [0, 1]
        (leading dimensions flattened into one batch for :meth:`logits`)."""
        flat = z.reshape(-1, z.shape[-1])  # (B, d)
        return torch.sigmoid(self.logits(flat)).reshape(*z.shape[:-1], self.data_dim)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws z ~ p(z) (global torch RNG) and their images: ``(n, d)``, ``(n, D)``."""
        z = self.prior().sample((n,))  # (n, d)
        return z, self(z)

    @torch.no_grad()
    def generate(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` images G(z), z ~ p(z) (global torch RNG): ``(n, D)`` in [0, 1]. An implicit
        model's samples are its images; ``mean`` changes nothing (there is no p(x | z))."""
        return self.sample(n)[1]

    def observation(self, z: torch.Tensor, scale: float | torch.Tensor) -> Distribution:
        r"""p(x | z) = N(x; G(z), scale^2 I) over the last dimension (Wu et al. 2017):
        ``Independent(Normal(G(z), scale), 1)``, batch shape ``z.shape[:-1]``."""
        mean = self(z)  # (..., D)
        scale = torch.as_tensor(scale, dtype=mean.dtype, device=mean.device).expand_as(mean)
        return Independent(Normal(mean, scale), 1)


class ObservedGenerator(nn.Module):
    r"""A generator with Wu et al. 2017's Gaussian observation model, as a latent-variable
    model with a density: ``prior()`` p(z) and ``likelihood(z)`` N(G(z), ``scale``^2 I), the
    interface :func:`dgm.ais.ais_log_likelihood` anneals over."""

    def __init__(self, generator: Generator, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the observation scale must be positive, got {scale}")
        self.generator, self.scale = generator, float(scale)

    def prior(self) -> Distribution:
        return self.generator.prior()

    def likelihood(self, z: torch.Tensor) -> Distribution:
        return self.generator.observation(z, self.scale)


class MLPGenerator(Generator):
    r"""G(z) = sigmoid(MLP(z)): ``latent_dim -> hidden... -> data_dim`` (Goodfellow et al.
    2014 used such a net, ReLU hidden units, sigmoid output).

    >>> MLPGenerator(8, [32])(torch.zeros(3, 8)).shape
    torch.Size([3, 784])
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        data_dim: int = 784,
        activation: str = "relu",
    ) -> None:
        super().__init__(latent_dim, data_dim)
        self.net = MLP(latent_dim, list(hidden), data_dim, activation)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, D)


class MLPDiscriminator(nn.Module):
    r"""The logit of D(x): ``data_dim -> hidden... -> 1``, returned as ``(B,)``.

    >>> MLPDiscriminator([32])(torch.zeros(3, 784)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        hidden: Sequence[int] = (256, 256),
        data_dim: int = 784,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.net = MLP(data_dim, list(hidden), 1, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (B, 1) -> (B,)


class DCGANGenerator(Generator):
    r"""The DCGAN generator (Radford et al. 2016) for 28 x 28 images:

        z -> Linear -> (w1, 7, 7) -> ConvT(4, 2, 1) -> (w2, 14, 14) -> ConvT(4, 2, 1) -> (1, 28, 28)

    batch normalization and ReLU after every layer but the last, whose sigmoid puts pixels in
    [0, 1] (the paper's tanh, for [-1, 1]). ``widths`` = (w1, w2).

    >>> DCGANGenerator(16, widths=(8, 4))(torch.zeros(3, 16)).shape
    torch.Size([3, 784])
    """

    def __init__(self, latent_dim: int, widths: tuple[int, int] = (128, 64)) -> None:
        super().__init__(latent_dim, 28 * 28)
        w1, w2 = widths
        self.widths = (w1, w2)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, w1 * 7 * 7, bias=False), nn.BatchNorm1d(w1 * 7 * 7), nn.ReLU()
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(w1, w2, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.ConvTranspose2d(w2, 1, 4, 2, 1),  # 14 -> 28
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self.widths[0], 7, 7)  # (B, w1, 7, 7)
        return self.deconv(h).flatten(1)  # (B, 1, 28, 28) -> (B, 784)


class DCGANDiscriminator(nn.Module):
    r"""The DCGAN discriminator (Radford et al. 2016) for 28 x 28 images:

        (1, 28, 28) -> Conv(4, 2, 1) -> (w1, 14, 14) -> Conv(4, 2, 1) -> (w2, 7, 7) -> Linear -> 1

    LeakyReLU(0.2) after each convolution, ``norm`` after the second only (never on the input
    layer). ``norm``: a layer for ``c`` channels, batch normalization by default; WGAN-GP's
    penalty is per example, which batch statistics break, so Gulrajani et al. 2017 use layer
    normalization (``lambda c: nn.GroupNorm(1, c)``) or none (``None``).

    >>> DCGANDiscriminator(widths=(4, 8))(torch.zeros(3, 784)).shape
    torch.Size([3])
    """

    def __init__(self, widths: tuple[int, int] = (64, 128), norm: Norm | None = nn.BatchNorm2d):
        super().__init__()
        w1, w2 = widths
        self.conv = nn.Sequential(
            nn.Conv2d(1, w1, 4, 2, 1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(w1, w2, 4, 2, 1, bias=norm is None),  # 14 -> 7
            norm(w2) if norm is not None else nn.Identity(),
            nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear(w2 * 7 * 7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.view(-1, 1, 28, 28))  # (B, w2, 7, 7)
        return self.out(h.flatten(1)).squeeze(-1)  # (B, w2 * 49) -> (B,)
