r"""Gradient estimators: the only code that samples z during training.

An estimator takes the model p_theta(x, z), the posterior q_phi(z | x) (a Distribution) and x, and
returns an :class:`Estimate` whose ``bound`` is the Monte Carlo value of the objective (what is
logged) and whose ``surrogate`` has that same value and the estimator's gradient (Pyro's
surrogate-loss idea: ``value + (surrogate - surrogate.detach())``). Training minimizes
``-surrogate.mean()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.distributions import Distribution, kl_divergence

from dgm.models import DeepLatentModel
from dgm.objectives import elbo

KLMode = Literal["analytic", "mc", "none"]


@dataclass
class Estimate:
    """Per-example quantities, each (B,), in nats."""

    bound: torch.Tensor  # the objective's Monte Carlo value
    surrogate: torch.Tensor  # same value, carries the estimator's gradient
    log_lik: torch.Tensor  # (1/K) sum_k log p(x | z_k)
    kl: torch.Tensor  # KL(q || p) (analytic) or its Monte Carlo estimate


class Reparameterized:
    r"""The pathwise estimator: z_k = lambda + eta * eps_k, eps_k ~ N(0, I), differentiated through.

    The objective is the K-sample ELBO
        (1/K) sum_k log p(x | z_k) - KL(q(z | x) || p(z))
    with the KL in closed form (``kl="analytic"``, ``torch.distributions.kl_divergence``), or by
    Monte Carlo from the same samples (``kl="mc"``: the bound is elbo(log w) with
    log w = log p(x, z) - log q(z | x)), or left out (``kl="none"``: the plain autoencoder's
    reconstruction objective, which is not a bound on log p(x)).
    (Kingma and Welling 2014, eq. 7 and 10; the lecture, "Re-parameterization Trick".)

    ``kl_weight`` (beta) < 1 is KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the
    gradient is that of E[log p(x|z)] - beta KL, while ``bound`` stays the true ELBO.
    """

    def __init__(self, k: int = 1, kl: KLMode = "analytic") -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if kl not in ("analytic", "mc", "none"):
            raise ValueError(f"kl must be 'analytic', 'mc' or 'none', got {kl!r}")
        self.k = k
        self.kl = kl

    def __call__(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        if not q.has_rsample:
            raise ValueError(f"{type(q).__name__} has no rsample: use a score-function estimator")
        z = q.rsample((self.k,))  # (K, B, d)
        log_lik = model.likelihood(z).log_prob(x)  # (K, B)
        if self.kl == "analytic":
            kl = kl_divergence(q, model.prior())  # (B,)
        elif self.kl == "mc":
            kl = (q.log_prob(z) - model.prior().log_prob(z)).mean(0)  # (K, B) -> (B,)
        else:
            kl = torch.zeros_like(log_lik[0])
        bound = elbo(log_lik) - kl  # for kl="mc" this is elbo(log_w), log_w = log_lik - log q/p
        surrogate = bound
        if kl_weight != 1.0:
            annealed = elbo(log_lik) - kl_weight * kl
            surrogate = bound.detach() + (annealed - annealed.detach())
        return Estimate(bound=bound, surrogate=surrogate, log_lik=log_lik.mean(0), kl=kl)
