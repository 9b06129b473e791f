r"""A linear-Gaussian latent-variable model, whose marginal and posterior are known in closed form.

p(z) = N(0, I_d),  p(x | z) = N(W z + b, sigma^2 I_D)  =>  p(x) = N(b, W W^T + sigma^2 I) and
p(z | x) = N(S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^{-1}.
With W's columns orthogonal, W^T W is diagonal and so is S: a diagonal-Gaussian q can be exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from dgm.models import DeepLatentModel, GaussianLikelihood, StandardNormalPrior


class FixedGaussianPosterior(nn.Module):
    """q(z | x) = N(m(x), diag(s^2)) with m(x) = A (x - c) + shift and free leaves for testing."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, shift: torch.Tensor, s: torch.Tensor):
        super().__init__()
        self.A, self.c = A, c
        self.shift = nn.Parameter(shift.clone())
        self.log_s = nn.Parameter(s.log().clone())

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        m = (x - self.c) @ self.A.T + self.shift  # (B, d)
        return Independent(Normal(m, self.log_s.exp().expand_as(m)), 1)


class LinearGaussian:
    def __init__(self, D: int = 5, d: int = 2, sigma: float = 1.0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
        scales = torch.linspace(0.8, 2.0, d, dtype=torch.float64)
        self.W = q * scales  # (D, d), orthogonal columns
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.sigma = sigma
        self.D, self.d = D, d
        decoder = nn.Linear(d, D).double()
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        self.model = DeepLatentModel(
            StandardNormalPrior(d).double(), decoder, GaussianLikelihood(sigma), D
        )

    def marginal(self) -> MultivariateNormal:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.D, dtype=torch.float64)
        return MultivariateNormal(self.b, cov)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * eps

    def posterior_cov_diag(self) -> torch.Tensor:
        wtw = (self.W**2).sum(0)  # diag(W^T W)
        return 1.0 / (1.0 + wtw / self.sigma**2)

    def exact_posterior(self) -> FixedGaussianPosterior:
        S = self.posterior_cov_diag()
        A = S[:, None] * self.W.T / self.sigma**2  # (d, D)
        return FixedGaussianPosterior(A, self.b, torch.zeros(self.d, dtype=torch.float64), S.sqrt())

    def perturbed_posterior(self, shift: float = 0.3, scale: float = 1.5) -> FixedGaussianPosterior:
        exact = self.exact_posterior()
        s = exact.log_s.detach().exp() * scale
        return FixedGaussianPosterior(
            exact.A, exact.c, torch.full((self.d,), shift, dtype=torch.float64), s
        )

    def elbo_closed_form(
        self, x: torch.Tensor, lam: torch.Tensor, eta: torch.Tensor, W=None, b=None
    ):
        r"""E_q[log p(x|z)] - KL(q || p), q = N(lam, diag(eta^2)); differentiable in all inputs."""
        W = self.W if W is None else W
        b = self.b if b is None else b
        s2 = self.sigma**2
        resid = x - lam @ W.T - b  # (B, D)
        trace = (eta**2 * (W**2).sum(0)).sum(-1)  # tr(W diag(eta^2) W^T)
        exp_log_lik = (
            -0.5 * self.D * math.log(2 * math.pi * s2) - 0.5 * ((resid**2).sum(-1) + trace) / s2
        )
        kl = 0.5 * (eta**2 + lam**2 - 1.0 - 2.0 * eta.log()).sum(-1)
        return exp_log_lik - kl
