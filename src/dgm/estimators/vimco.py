r"""VIMCO: the score-function estimator of the IWAE bound's gradient with a leave-one-out control
variate per sample (Mnih and Rezende 2016, "Variational inference for Monte Carlo objectives")."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution

from dgm.estimators.base import Estimate, Estimator
from dgm.estimators.score import score_terms
from dgm.models import DeepLatentModel
from dgm.objectives import IWAE, Bound, iwae


def leave_one_out_signal(log_w: torch.Tensor) -> torch.Tensor:
    r"""VIMCO's learning signal per sample, (K, B) -> (K, B) (Mnih and Rezende 2016, eq. 10):

        L_hat(z_{1:K}) - log (1/K) (sum_{j != k} w_j + w_hat_{-k}),
        log w_hat_{-k} = (1/(K-1)) sum_{j != k} log w_j   (the geometric mean of the others),

    the bound minus the bound with sample k replaced by a value that does not depend on it.
    """
    k = log_w.shape[0]
    value = torch.logsumexp(log_w, 0) - math.log(k)  # (B,)
    log_w_hat = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K, B): geometric mean of others
    # replace the k-th log-weight by log w_hat_{-k}: an off-diagonal mask over (K, K, B)
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # (K, K, 1)
    swapped = torch.where(eye, log_w_hat.unsqueeze(1), log_w.unsqueeze(0))  # (K_k, K_j, B)
    value_without = torch.logsumexp(swapped, 1) - math.log(k)  # (K, B)
    return value - value_without


class VIMCO(Estimator):
    r"""The IWAE bound's gradient by the score function, z_k ~ q never differentiated:

        grad L_hat = sum_k  s_k grad_phi log q(z_k | x)  +  sum_k  w~_k grad log w_k,

    with L_hat = log (1/K) sum_k w_k, w~_k = w_k / sum_j w_j, and s_k the leave-one-out learning
    signal of :func:`leave_one_out_signal`. The control variate of sample k depends on the other
    samples only, so the estimator stays unbiased; it needs K >= 2 and log q at any z (not the
    reparameterization trick: z may be discrete). Under KL warm-up (beta < 1) the log-weights
    of the gradient are log p(x | z) + beta log p(z)/q(z) and the logged bound stays the true one.
    """

    bounds = (IWAE,)
    needs = frozenset({"log_prob"})
    min_k = 2

    def __init__(self, k: int = 2, bound: Bound | None = None) -> None:
        super().__init__(IWAE() if bound is None else bound, k)

    def forward(
        self, model: DeepLatentModel, q: Distribution, x: torch.Tensor, kl_weight: float = 1.0
    ) -> Estimate:
        z, log_lik, log_q = score_terms(model, q, x, self.k)
        log_ratio = model.prior().log_prob(z) - log_q  # (K, B)
        value = iwae(log_lik + log_ratio).detach()  # (B,): the bound
        log_w = log_lik + kl_weight * log_ratio  # (K, B), annealed if beta < 1
        annealed = iwae(log_w)  # its gradient with z held fixed: sum_k w~_k grad log w_k
        signal = leave_one_out_signal(log_w.detach())  # (K, B)
        score = (signal * log_q).sum(0)  # (B,): its gradient is the score-function term
        surrogate = value + (annealed - annealed.detach()) + (score - score.detach())
        return Estimate(value, surrogate, log_lik.detach().mean(0), -log_ratio.detach().mean(0))
