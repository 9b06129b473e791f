r"""Path-derivative estimators: "sticking the landing" for the ELBO and doubly reparameterized
gradients (DReG) for the IWAE bound. Both drop the score term E_q[grad_phi log q], which is zero
in expectation, by evaluating log q with its parameters' gradient stopped."""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from dgm.distributions import rsample_and_log_prob, stop_parameters
from dgm.estimators.base import Estimate, Estimator
from dgm.models import DeepLatentModel
from dgm.objectives import ELBO, IWAE, Bound, elbo, iwae


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

    bounds = (ELBO,)
    needs = frozenset({"rsample", "log_prob"})
    kl_modes = ("mc",)
    notes = {"iwae": "stl is biased for it: use dreg"}

    def __init__(self, k: int = 1, bound: Bound | None = None) -> None:
        super().__init__(ELBO(kl="mc") if bound is None else bound, k)

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

    bounds = (IWAE,)
    needs = frozenset({"rsample", "log_prob"})

    def __init__(self, k: int = 1, bound: Bound | None = None) -> None:
        super().__init__(IWAE() if bound is None else bound, k)

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
