r"""The pathwise (reparameterized) estimator of the ELBO's, the IWAE bound's and the plain
autoencoder's gradient."""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from dgm.distributions import kl_to_prior, rsample_and_log_prob
from dgm.estimators.base import Estimate, Estimator, annealing, free_bits_kl
from dgm.models import DeepLatentModel
from dgm.objectives import ELBO, IWAE, Bound, Reconstruction, elbo, iwae


class Reparameterized(Estimator):
    r"""The pathwise estimator: z_k = lambda + eta * eps_k, eps_k ~ N(0, I), differentiated through.

    :class:`~dgm.objectives.ELBO`: the K-sample ELBO (1/K) sum_k log p(x | z_k) - KL(q(z | x) ||
    p(z)) with the KL in closed form (``kl="analytic"``), or by Monte Carlo from the same samples
    (``kl="mc"``: elbo(log w) with log w = log p(x, z) - log q(z | x)). (Kingma and Welling 2014,
    eq. 7 and 10; the lecture, "Re-parameterization Trick".)

    :class:`~dgm.objectives.IWAE`: log (1/K) sum_k w_k (Burda et al. 2015), differentiated
    through all K paths; its gradient weighs each sample's grad log w_k by the normalized weight
    w_k / sum_j w_j. :class:`~dgm.objectives.Reconstruction`: the plain autoencoder's
    E_q[log p(x | z)], no KL.

    ``kl_weight`` (beta) < 1 is KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the
    gradient is that of E[log p(x|z)] - beta KL (for the IWAE bound, of the bound over
    log p(x|z) + beta log p(z)/q(z)), while ``bound`` stays the true bound. ``free_bits`` > 0
    replaces the KL's gradient by that of :func:`~dgm.estimators.base.free_bits_kl` (ELBO only).
    """

    bounds = (ELBO, IWAE, Reconstruction)
    needs = frozenset({"rsample"})

    def __init__(self, bound: Bound | None = None, k: int = 1, free_bits: float = 0.0) -> None:
        super().__init__(ELBO() if bound is None else bound, k)
        if free_bits < 0 or (free_bits > 0 and not isinstance(self.bound, ELBO)):
            raise ValueError("free_bits must be >= 0, and applies to the ELBO's KL only")
        self.free_bits = free_bits

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        bound = self.bound
        if isinstance(bound, ELBO) and bound.kl == "analytic":
            if not q.has_rsample:
                raise ValueError(
                    f"{type(q).__name__} has no rsample: use a score-function estimator"
                )
            z = q.rsample((self.k,))  # (K, B, d)
            log_lik = model.likelihood(z).log_prob(x)  # (K, B)
            kl = kl_to_prior(q, model.prior())  # (B,)
            return self._elbo(model, q, log_lik, kl, kl_weight)
        z, log_q = rsample_and_log_prob(q, self.k)  # (K, B, d), (K, B)
        log_lik = model.likelihood(z).log_prob(x)  # (K, B)
        if isinstance(bound, Reconstruction):
            return self._elbo(model, q, log_lik, torch.zeros_like(log_lik[0]), kl_weight)
        log_ratio = model.prior().log_prob(z) - log_q  # (K, B): log p(z) - log q(z | x)
        if isinstance(bound, ELBO):
            return self._elbo(model, q, log_lik, -log_ratio.mean(0), kl_weight)
        value = iwae(log_lik + log_ratio)  # (B,)
        surrogate = value
        if annealing(kl_weight):
            annealed = iwae(log_lik + kl_weight * log_ratio)
            surrogate = value.detach() + (annealed - annealed.detach())
        return Estimate(value, surrogate, log_lik.mean(0), -log_ratio.mean(0))

    def _elbo(
        self,
        model: DeepLatentModel,
        q: Distribution,
        log_lik: torch.Tensor,
        kl: torch.Tensor,
        kl_weight: float,
    ) -> Estimate:
        value = elbo(log_lik) - kl  # for kl="mc" this is elbo(log_w)
        surrogate = value
        if annealing(kl_weight) or self.free_bits > 0:
            kl_term = kl
            if self.free_bits > 0:
                kl_term = free_bits_kl(q, model.prior(), kl, self.free_bits)
            annealed = elbo(log_lik) - kl_weight * kl_term
            surrogate = value.detach() + (annealed - annealed.detach())
        return Estimate(bound=value, surrogate=surrogate, log_lik=log_lik.mean(0), kl=kl)
