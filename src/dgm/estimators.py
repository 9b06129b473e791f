r"""Gradient estimators: the only code that samples z during training.

An estimator takes the model p_theta(x, z), the posterior q_phi(z | x) (a Distribution) and x, and
returns an :class:`Estimate` whose ``bound`` is the Monte Carlo value of the objective (what is
logged) and whose ``surrogate`` has that same value and the estimator's gradient (Pyro's
surrogate-loss idea: ``value + (surrogate - surrogate.detach())``). Training minimizes
``-surrogate.mean()``; whatever the estimator, what is logged is the true bound.

Estimators are modules because a control variate may carry state (a running mean) or parameters
(NVIL's baseline network); those are trained with the model and saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

from dgm.baselines import Baseline
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


class Estimator(nn.Module):
    """Contract: ``forward(model, q, x, kl_weight) -> Estimate``, K samples of z per example."""

    def __init__(self, k: int = 1, kl: KLMode = "analytic") -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if kl not in ("analytic", "mc", "none"):
            raise ValueError(f"kl must be 'analytic', 'mc' or 'none', got {kl!r}")
        self.k = k
        self.kl = kl


class Reparameterized(Estimator):
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

    def forward(
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


class ScoreFunction(Estimator):
    r"""The score-function (REINFORCE, likelihood-ratio) estimator: z_k ~ q, never differentiated.

        grad_phi E_q[f(z)] = E_q[grad_phi log q(z) f(z)]
                           ~ (1/K) sum_k grad_phi log q(z_k) (f(z_k) - b_k)

    With ``kl="analytic"`` (the lecture's naive estimator) f = log p(x | z) and the KL term is
    differentiated in closed form; with ``kl="mc"``, f = log w = log p(x, z) - log q(z | x), plus
    the term E_q[grad_phi log w], which has mean zero (Ranganath et al. 2014). The decoder's
    gradient is the Monte Carlo average (1/K) sum_k grad_theta log p(x | z_k) in both cases.
    ``baseline`` (a :class:`~dgm.baselines.Baseline`) is the control variate b_k; ``None`` is the
    lecture's estimator with no variance reduction. (Williams 1992; Paisley et al. 2012; the
    lecture, "Variational Bayes EM".)
    """

    def __init__(
        self, k: int = 1, kl: KLMode = "analytic", baseline: Baseline | None = None
    ) -> None:
        super().__init__(k, kl)
        if kl == "none":
            raise ValueError("the score-function estimator needs a KL term (analytic or mc)")
        self.baseline = baseline

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        with torch.no_grad():
            z = q.sample((self.k,))  # (K, B, d): no path from z back to phi
        log_lik = model.likelihood(z).log_prob(x)  # (K, B), carries theta's gradient
        log_q = q.log_prob(z)  # (K, B), carries phi's gradient (the score)
        if self.kl == "analytic":
            kl = kl_divergence(q, model.prior())  # (B,)
            f = log_lik.detach()  # (K, B)
            annealed = elbo(log_lik) - kl_weight * kl  # (B,)
        else:
            log_ratio = model.prior().log_prob(z) - log_q  # (K, B): -log q/p per sample
            kl = -log_ratio.mean(0)  # (B,)
            f = (log_lik + kl_weight * log_ratio).detach()
            annealed = elbo(log_lik + kl_weight * log_ratio)
        bound = (elbo(log_lik) - kl).detach()
        aux = f.new_zeros(())
        if self.baseline is not None:
            b, aux = self.baseline(f, x)
            f = f - b
        score = (f * log_q).mean(0)  # (B,): its gradient is the score-function estimate
        surrogate = bound + (annealed - annealed.detach()) + (score - score.detach())
        # the baseline's own regression loss, with value 0 in the surrogate: psi <- argmin aux
        surrogate = surrogate - (aux - aux.detach())
        return Estimate(bound=bound, surrogate=surrogate, log_lik=log_lik.detach().mean(0), kl=kl)
