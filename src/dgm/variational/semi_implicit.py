r"""Semi-implicit variational inference (Yin and Zhou 2018): q(z | x) a Gaussian whose mean
is itself random, with an implicit mixing distribution (noise pushed through a network),

    q(z | x) = integral N(z; psi, diag sigma^2(x)) q(psi | x) dpsi,
    psi = mu_phi(h(x), epsilon),  epsilon ~ N(0, I_e),

whose density has no closed form. Along its own draws z (from psi_0), log q(z | x) is replaced
by the mixture over psi_0 and J more draws psi_1..psi_J of the mixing distribution,

    log q_J(z | x) = log (1 / (J + 1)) sum_{j=0}^J N(z; psi_j, diag sigma^2(x)),

whose expectation is at least log q(z | x) (Molchanov et al. 2019; Sobolev and Vetrov 2019:
psi_0 is a draw of q(psi | z, x)). So every bound computed from it is below the bound with the
true q, hence below log p(x), and rises towards it as J grows; at J = 0 it is the ELBO of the
Gaussian q(z | psi_0) alone, which is not a bound on the ELBO of q but is one on log p(x) just
the same. The J draws are shared by the K samples of an example.

Training uses ``extra`` = J draws; evaluation (the module in ``eval()`` mode: ``dgm eval``'s
importance-sampled ln p(x) and AIS's comparison) uses ``eval_extra``, as Yin and Zhou evaluate
with many more draws than they train with.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from dgm.nn import MLP

_EMPTY = torch.Size()


class SemiImplicitPosterior(Distribution):
    r"""q(z | x) of :class:`SemiImplicitEncoder` for a batch: ``mixing(S)`` draws S means
    psi ``(S, B, d)`` (reparameterized), ``scale`` ``(B, d)`` is sigma(x); batch (B,), event (d,).
    ``extra``: the J further draws of psi in log q_J (see the module docstring)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mixing, scale: torch.Tensor, extra: int) -> None:  # noqa: ANN001
        self.mixing, self.scale, self.extra = mixing, scale, extra
        super().__init__(scale.shape[:-1], scale.shape[-1:], validate_args=False)

    def log_mixture(self, z: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        r"""log N(z_k; psi_j, diag sigma^2) ``(K, J, B)`` for z ``(K, B, d)`` and psi
        ``(J, B, d)``, by the expansion of the square (matrix products, no (K, J, B, d) tensor)."""
        inv = self.scale.reciprocal().square()  # (B, d)
        zz = (z.square() * inv).sum(-1)  # (K, B)
        pp = (psi.square() * inv).sum(-1)  # (J, B)
        zp = torch.einsum("kbd,jbd->kjb", z * inv, psi)  # (K, J, B)
        d = z.shape[-1]
        log_norm = self.scale.log().sum(-1) + 0.5 * d * math.log(2 * math.pi)  # (B,)
        return -0.5 * (zz[:, None] - 2 * zp + pp[None]) - log_norm

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = _EMPTY
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K draws z = psi_0 + sigma eps ``(K, B, d)`` and log q_J(z | x) ``(K, B)``."""
        shape = torch.Size(sample_shape)
        k = shape.numel()
        psi0 = self.mixing(k)  # (K, B, d)
        z = psi0 + self.scale * torch.randn_like(psi0)
        d = z.shape[-1]
        log_norm = self.scale.log().sum(-1) + 0.5 * d * math.log(2 * math.pi)  # (B,)
        own = -0.5 * ((z - psi0) / self.scale).square().sum(-1) - log_norm  # (K, B)
        terms = own.unsqueeze(1)  # (K, 1, B): log N(z_k; psi_0k, sigma^2)
        if self.extra > 0:
            psi = self.mixing(self.extra)  # (J, B, d), shared by the K draws
            terms = torch.cat([terms, self.log_mixture(z, psi)], 1)  # (K, J + 1, B)
        log_q = torch.logsumexp(terms, 1) - math.log(self.extra + 1)  # (K, B)
        return z.reshape(*shape, *z.shape[1:]), log_q.reshape(*shape, -1)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        psi = self.mixing(shape.numel())  # (K, B, d)
        z = psi + self.scale * torch.randn_like(psi)
        return z.reshape(*shape, *z.shape[1:])

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class SemiImplicitEncoder(nn.Module):
    r"""x -> ``trunk`` -> h ``(B, H)``; sigma(x) = exp(Linear(h)); psi = ``mixer``([h, eps]),
    eps ~ N(0, I_``noise_dim``) per draw. ``forward(x, index)`` returns a
    :class:`SemiImplicitPosterior` with ``extra`` (training) or ``eval_extra`` (evaluation
    mode) further draws of psi in its density."""

    #: what q offers the estimators: draws with the J-sample surrogate of their log-density
    provides = frozenset({"rsample", "density"})

    def __init__(
        self,
        trunk: nn.Module,
        context_dim: int,
        latent_dim: int,
        noise_dim: int,
        mixer_hidden: list[int],
        activation: str,
        extra: int,
        eval_extra: int = 1000,
    ) -> None:
        super().__init__()
        if extra < 0 or eval_extra < 0:
            raise ValueError(f"extra draws must be >= 0, got {extra}, {eval_extra}")
        self.trunk = trunk
        self.log_scale = nn.Linear(context_dim, latent_dim)
        self.mixer = MLP(context_dim + noise_dim, mixer_hidden, latent_dim, activation)
        self.latent_dim, self.noise_dim = latent_dim, noise_dim
        self.extra, self.eval_extra = extra, eval_extra

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        h = self.trunk(x)  # (B, H)
        scale = self.log_scale(h).exp()  # (B, d)

        def mixing(s: int) -> torch.Tensor:  # s draws of psi: (s, B, d)
            eps = torch.randn(s, *h.shape[:-1], self.noise_dim, dtype=h.dtype, device=h.device)
            return self.mixer(torch.cat([h.expand(s, *h.shape), eps], -1))

        extra = self.extra if self.training else self.eval_extra
        return SemiImplicitPosterior(mixing, scale, extra)
