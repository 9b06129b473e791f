"""Priors p(z)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from dgm.distributions import StandardNormal
from dgm.models.chain import ConditionalGaussian, GaussianChain


class StandardNormalPrior(nn.Module):
    r"""p(z) = N(z; 0, I) over ``latent_dim`` dimensions (event shape (latent_dim,))."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers follow the model to its device and dtype; not saved (persistent=False).
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return StandardNormal(self.loc, self.scale)


class HierarchicalPrior(nn.Module):
    r"""p(z_1, ..., z_L) = N(z_L; 0, I) p(z_{L-1} | z_L) ... p(z_1 | z_2), each conditional a
    diagonal Gaussian whose (mu, log sigma) an MLP computes from the layer above (Burda et al.
    2015, section 5). The sample is laid out z_1 first (the layer the decoder reads).

    Args:
        sizes: (d_1, ..., d_L), bottom to top.
        nets: for i = 1..L-1, a network (..., d_{i+1}) -> (..., 2 d_i).
    """

    def __init__(self, sizes: list[int], nets: list[nn.Module]) -> None:
        super().__init__()
        if len(nets) != len(sizes) - 1:
            raise ValueError(f"{len(sizes)} layers need {len(sizes) - 1} conditionals")
        self.sizes = list(sizes)
        self.top = StandardNormalPrior(sizes[-1])
        self.conditionals = nn.ModuleList(ConditionalGaussian(n) for n in reversed(nets))
        self.latent_dim = sum(sizes)
        self.bottom_dim = sizes[0]

    def forward(self) -> Distribution:
        return GaussianChain(self.top(), list(self.conditionals), self.sizes[::-1], reverse=True)
