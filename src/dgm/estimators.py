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
from torch.distributions import Distribution, Independent, Normal

from dgm.baselines import Baseline
from dgm.distributions import (
    kl_to_prior,
    normal_kl,
    rsample_and_log_prob,
    stop_parameters,
)
from dgm.models import DeepLatentModel
from dgm.objectives import elbo, iwae

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


Bound = Literal["elbo", "iwae"]


def annealing(kl_weight: float | torch.Tensor) -> bool:
    """Whether the KL weight (beta) may differ from 1. A () tensor always may: the compiled
    whole step (dgm.train.step) passes beta as one during KL warm-up, so that one graph serves
    every value of it, and its value must not be branched on there."""
    return isinstance(kl_weight, torch.Tensor) or kl_weight != 1.0


def free_bits_kl(q: Distribution, p: Distribution, kl: torch.Tensor, lam: float) -> torch.Tensor:
    r"""The KL term of the free-bits objective, per example (B,), for its gradient only.

    Kingma et al. (2016, eq. 15): sum_j max(lam, E_batch[KL_j]); a latent dimension j whose KL,
    averaged over the minibatch, is below ``lam`` nats gets no gradient from the KL. With a
    diagonal-Gaussian q and p the KL_j are per dimension; otherwise the whole KL is one group with
    threshold lam * latent_dim.
    """
    if (
        isinstance(q, Independent)
        and isinstance(q.base_dist, Normal)
        and isinstance(p, Independent)
        and isinstance(p.base_dist, Normal)
    ):
        kl_j = normal_kl(q.base_dist, p.base_dist)  # (B, d)
        active = (kl_j.mean(0) >= lam).detach()  # (d,)
        return (kl_j * active).sum(-1)
    d = q.event_shape[-1]
    return kl * (kl.mean() >= lam * d).detach()


class Reparameterized(Estimator):
    r"""The pathwise estimator: z_k = lambda + eta * eps_k, eps_k ~ N(0, I), differentiated through.

    ``bound="elbo"``: the K-sample ELBO (1/K) sum_k log p(x | z_k) - KL(q(z | x) || p(z)) with the
    KL in closed form (``kl="analytic"``, ``torch.distributions.kl_divergence``), or by Monte Carlo
    from the same samples (``kl="mc"``: elbo(log w) with log w = log p(x, z) - log q(z | x)), or
    left out (``kl="none"``: the plain autoencoder's reconstruction objective, not a bound).
    (Kingma and Welling 2014, eq. 7 and 10; the lecture, "Re-parameterization Trick".)

    ``bound="iwae"``: log (1/K) sum_k w_k (Burda et al. 2015), differentiated through all K paths;
    its gradient weighs each sample's grad log w_k by the normalized weight w_k / sum_j w_j.

    ``kl_weight`` (beta) < 1 is KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the
    gradient is that of E[log p(x|z)] - beta KL (for the IWAE bound, of the bound over
    log p(x|z) + beta log p(z)/q(z)), while ``bound`` stays the true bound. ``free_bits`` > 0
    replaces the KL's gradient by that of :func:`free_bits_kl` (ELBO only).
    """

    def __init__(
        self, k: int = 1, kl: KLMode = "analytic", bound: Bound = "elbo", free_bits: float = 0.0
    ) -> None:
        super().__init__(k, kl)
        if bound not in ("elbo", "iwae"):
            raise ValueError(f"bound must be 'elbo' or 'iwae', got {bound!r}")
        if bound == "iwae" and kl == "none":
            raise ValueError("the IWAE bound needs log q and log p(z): kl cannot be 'none'")
        if free_bits < 0 or (free_bits > 0 and bound != "elbo"):
            raise ValueError("free_bits must be >= 0, and applies to the ELBO's KL only")
        self.bound = bound
        self.free_bits = free_bits

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        if self.kl == "analytic" and self.bound == "elbo":
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
        if self.kl == "none":
            return self._elbo(model, q, log_lik, torch.zeros_like(log_lik[0]), kl_weight)
        log_ratio = model.prior().log_prob(z) - log_q  # (K, B): log p(z) - log q(z | x)
        if self.bound == "elbo":
            return self._elbo(model, q, log_lik, -log_ratio.mean(0), kl_weight)
        bound = iwae(log_lik + log_ratio)  # (B,)
        surrogate = bound
        if annealing(kl_weight):
            annealed = iwae(log_lik + kl_weight * log_ratio)
            surrogate = bound.detach() + (annealed - annealed.detach())
        return Estimate(bound, surrogate, log_lik.mean(0), -log_ratio.mean(0))

    def _elbo(
        self,
        model: DeepLatentModel,
        q: Distribution,
        log_lik: torch.Tensor,
        kl: torch.Tensor,
        kl_weight: float,
    ) -> Estimate:
        bound = elbo(log_lik) - kl  # for kl="mc" this is elbo(log_w)
        surrogate = bound
        if annealing(kl_weight) or self.free_bits > 0:
            kl_term = kl
            if self.free_bits > 0:
                kl_term = free_bits_kl(q, model.prior(), kl, self.free_bits)
            annealed = elbo(log_lik) - kl_weight * kl_term
            surrogate = bound.detach() + (annealed - annealed.detach())
        return Estimate(bound=bound, surrogate=surrogate, log_lik=log_lik.mean(0), kl=kl)


def path_terms(
    model: DeepLatentModel, q: Distribution, x: torch.Tensor, k: int
) -> tuple[torch.Tensor, ...]:
    """What STL and DReG need from K reparameterized draws: z (K, B, d), log q(z) (K, B),
    log q_bar(z) (K, B: the same value, with the gradient reaching phi through z only),
    log p(x | z) (K, B) and log p(z) (K, B)."""
    z, log_q = rsample_and_log_prob(q, k)
    log_q_bar = stop_parameters(q).log_prob(z)
    return z, log_q, log_q_bar, model.likelihood(z).log_prob(x), model.prior().log_prob(z)


class StickingTheLanding(Estimator):
    r"""The ELBO's pathwise gradient without the score term ("sticking the landing", Roeder et al.
    2017): log w_k = log p(x, z_k) - log q_bar(z_k), where q_bar is q with its parameters'
    gradient stopped, so phi's gradient flows through z only.

    Unbiased for the ELBO's gradient (the dropped term E_q[grad_phi log q] is zero), and its
    variance vanishes when q is the exact posterior (log w is then constant in z). The KL is
    always by Monte Carlo. Not valid for the IWAE bound, where it is biased (Tucker et al. 2018).
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__(k, "mc")

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        z, log_q, log_q_bar, log_lik, log_prior = path_terms(model, q, x, self.k)
        kl = (log_q - log_prior).mean(0)  # (B,)
        bound = (elbo(log_lik) - kl).detach()
        annealed = elbo(log_lik + kl_weight * (log_prior - log_q_bar))
        surrogate = bound + (annealed - annealed.detach())
        return Estimate(bound, surrogate, log_lik.detach().mean(0), kl.detach())


class DReG(Estimator):
    r"""Doubly reparameterized gradients for the IWAE bound (Tucker et al. 2018, eq. 5).

    The decoder's gradient is the IWAE gradient sum_k w~_k grad_theta log w_k; the encoder's is
        sum_k w~_k^2  (d log w_k / d z_k)  (d z_k / d phi),   w~_k = w_k / sum_j w_j,
    with log w_k = log p(x, z_k) - log q_bar(z_k) (q's parameters stopped). A hook on z scales the
    gradient reaching z_k (and so phi) by w~_k on top of the surrogate's weight w~_k. Unbiased for
    the IWAE bound's gradient, and its encoder gradient does not lose its signal-to-noise ratio as
    K grows. With K = 1 it is :class:`StickingTheLanding`. Under KL warm-up (log w_k =
    log p(x|z_k) + beta log p(z_k)/q(z_k)) the identity applies to beta's share of the score
    term only, and the factor becomes w~_k ((1 - beta) + beta w~_k).
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__(k, "mc")

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        z, log_q, log_q_bar, log_lik, log_prior = path_terms(model, q, x, self.k)
        log_ratio = log_prior - log_q  # (K, B)
        bound = iwae(log_lik + log_ratio).detach()  # (B,)
        log_w = log_lik + kl_weight * (log_prior - log_q_bar)  # (K, B), annealed if beta < 1
        weights = torch.softmax(log_w.detach(), 0)  # (K, B): w~_k
        # the path gradient's extra factor: w~_k for the IWAE bound; under warm-up (beta < 1) the
        # dropped score term is beta's share only, which gives (1 - beta) + beta w~_k
        factor = (1.0 - kl_weight) + kl_weight * weights  # (K, B)
        if z.requires_grad:
            z.register_hook(lambda grad: grad * factor.unsqueeze(-1))  # (K, B, d)
        weighted = (weights * log_w).sum(0)  # (B,): the value is not the bound; gradient only
        surrogate = bound + (weighted - weighted.detach())
        return Estimate(bound, surrogate, log_lik.detach().mean(0), -log_ratio.detach().mean(0))


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
            kl = kl_to_prior(q, model.prior())  # (B,)
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
