r"""The score-function (REINFORCE) estimator of the ELBO's gradient, with or without a control
variate."""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from dgm.baselines import Baseline
from dgm.distributions import kl_to_prior
from dgm.estimators.base import Estimate, Estimator
from dgm.models import DeepLatentModel
from dgm.objectives import ELBO, Bound, elbo


def score_terms(
    model: DeepLatentModel, q: Distribution, x: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What score-function estimators need from K draws z ~ q that are never differentiated:
    z (K, B, d), log p(x | z) (K, B; theta's gradient) and log q(z | x) (K, B; the score)."""
    with torch.no_grad():
        z = q.sample((k,))  # (K, B, d): no path from z back to phi
    return z, model.likelihood(z).log_prob(x), q.log_prob(z)


class ScoreFunction(Estimator):
    r"""The score-function (REINFORCE, likelihood-ratio) estimator: z_k ~ q, never differentiated.

        grad_phi E_q[f(z)] = E_q[grad_phi log q(z) f(z)]
                           ~ (1/K) sum_k grad_phi log q(z_k) (f(z_k) - b_k)

    With ``ELBO(kl="analytic")`` (the lecture's naive estimator) f = log p(x | z) and the KL
    term is differentiated in closed form; with ``ELBO(kl="mc")``, f = log w = log p(x, z) -
    log q(z | x), plus the term E_q[grad_phi log w], which has mean zero (Ranganath et al.
    2014). The decoder's gradient is the Monte Carlo average (1/K) sum_k grad_theta
    log p(x | z_k) in both cases.
    ``baseline`` (a :class:`~dgm.baselines.Baseline`) is the control variate b_k; ``None`` is the
    lecture's estimator with no variance reduction. (Williams 1992; Paisley et al. 2012; the
    lecture, "Variational Bayes EM".)
    """

    bounds = (ELBO,)
    needs = frozenset({"log_prob"})
    functional = False  # its baseline may keep a running mean

    def __init__(
        self, bound: Bound | None = None, k: int = 1, baseline: Baseline | None = None
    ) -> None:
        super().__init__(ELBO() if bound is None else bound, k)
        self.baseline = baseline

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        z, log_lik, log_q = score_terms(model, q, x, self.k)
        if self.bound.kl == "analytic":
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
