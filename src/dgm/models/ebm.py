r"""Deep energy-based models: p(x) = exp(-E_theta(x)) / Z over images in [0, 1]^D, with no
tractable Z, sampled by Langevin dynamics (Du and Mordatch 2019; Nijkamp et al. 2019).

The sampler is the update of those papers,

    x <- clamp(x - step * grad_x E(x) + noise * xi, 0, 1),   xi ~ N(0, I),

which with ``noise`` = sqrt(2 ``step``) and no clamp is the unadjusted Langevin algorithm: on a
Gaussian energy its stationary law is known in closed form (tested). The papers decouple the
two (a large step, a small noise): short-run chains that sample well but not exactly p.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvEnergy(nn.Module):
    r"""E(x) for 28 x 28 images: three strided 3 x 3 convolutions (``channels``, 2x, 2x) with
    SiLU, then a linear map to one number: ``(B, 784) -> (B,)``."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, 1, 1),  # 28
            nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1),  # 14
            nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1),  # 7
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * c * 49, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, 1, 28, 28)).squeeze(-1)


def langevin(
    energy: nn.Module,
    x: Tensor,
    steps: int,
    step_size: float,
    noise: float,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """``steps`` updates x <- x - step_size grad E(x) + noise xi (global RNG), clamped to
    ``clamp`` (None: not clamped); the energy's parameters get no gradient. Returns the last x
    (detached)."""
    x = x.detach()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        with torch.no_grad():
            x = x - step_size * grad + noise * torch.randn_like(x)
            if clamp is not None:
                x = x.clamp(*clamp)
    return x.detach()


class EnergyModel(nn.Module):
    """An energy network and its Langevin sampler's settings: what a loaded run holds."""

    def __init__(
        self, energy: nn.Module, step_size: float = 10.0, noise: float = 0.005, dim: int = 784
    ) -> None:
        super().__init__()
        self.energy, self.step_size, self.noise, self.dim = energy, step_size, noise, dim

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def generate(self, n: int, mean: bool = True, steps: int = 100) -> Tensor:
        """``n`` images: ``steps`` Langevin updates from uniform noise (global RNG) ``(n, D)``.
        ``mean`` changes nothing: the chain's last state is the sample."""
        if steps < 1:
            raise ValueError(f"Langevin sampling needs at least one step, got steps = {steps}")
        like = next(self.energy.parameters())
        with torch.inference_mode(False), torch.enable_grad():  # Langevin needs grad_x E
            x = torch.rand(n, self.dim, dtype=like.dtype, device=like.device)
            return langevin(self.energy, x, steps, self.step_size, self.noise)
