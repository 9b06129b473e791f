r"""The deep latent-variable model p_theta(x, z) = p_theta(x | T_theta(z)) p(z) of the lecture."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from dgm.models.likelihoods import Likelihood
from dgm.models.prior import HierarchicalPrior, StandardNormalPrior


class DeepLatentModel(nn.Module):
    r"""p(x, z) = p(x | decoder(z)) p(z): a neural network maps z to the likelihood's parameters.

    Args:
        prior: a module returning p(z) with event shape (latent_dim,).
        decoder: a network (..., latent_dim) -> (..., likelihood.param_size(data_dim)).
        likelihood: the head turning the decoder's output into p(x | z), event shape (data_dim,).

    Shapes: ``likelihood(z)`` with z (K, B, latent_dim) has batch shape (K, B); ``log_joint(x, z)``
    with x (B, D) returns (K, B).
    """

    def __init__(
        self,
        prior: StandardNormalPrior | HierarchicalPrior,
        decoder: nn.Module,
        likelihood: Likelihood,
        data_dim: int,
    ) -> None:
        super().__init__()
        self.p_z = prior
        self.decoder = decoder
        self.head = likelihood
        self.latent_dim = prior.latent_dim
        # with several stochastic layers z = [z_1, ..., z_L] and the decoder reads z_1 only
        self.bottom_dim = getattr(prior, "bottom_dim", prior.latent_dim)
        self.data_dim = data_dim

    @torch.no_grad()
    def init_output_bias(self, x_mean: torch.Tensor) -> None:
        """Start p(x | z) at the data mean: set the decoder's last bias (as Burda et al. 2015)."""
        last = [m for m in self.decoder.modules() if isinstance(m, nn.Linear)][-1]
        last.bias.copy_(self.head.output_bias(x_mean.to(last.bias)))

    def prior(self) -> Distribution:
        return self.p_z()

    def likelihood(self, z: torch.Tensor) -> Distribution:
        if self.bottom_dim != self.latent_dim:
            z = z[..., : self.bottom_dim]  # z_1, the layer next to x
        return self.head(self.decoder(z))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r"""log p(x, z) = log p(x | z) + log p(z);  x (B, D), z (K, B, d) -> (K, B)."""
        return self.likelihood(z).log_prob(x) + self.prior().log_prob(z)

    def sample(self, n: int) -> tuple[torch.Tensor, Distribution]:
        """Draw z_i ~ p(z), i = 1..n; return z (n, d) and p(x | z) (batch shape (n,))."""
        z = self.prior().sample((n,))  # (n, d)
        return z, self.likelihood(z)
