"""Priors p(z)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal


class StandardNormalPrior(nn.Module):
    r"""p(z) = N(z; 0, I) over ``latent_dim`` dimensions (event shape (latent_dim,))."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers follow the model to its device and dtype; not saved (persistent=False).
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return Independent(
            Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False
        )
