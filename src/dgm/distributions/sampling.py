r"""Draws of z with their log-density, for the estimators (the only code that samples during
training) and for evaluation: a flow gives both in one pass; a diagonal Gaussian's log-density
comes from its standard normal draws."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, Normal


def rsample_and_log_prob(q: Distribution, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K reparameterized draws z (K, B, d) and log q(z | x) (K, B), in one pass for a flow."""
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob((k,))
    if not q.has_rsample:
        raise ValueError(f"{type(q).__name__} has no rsample: use a score-function estimator")
    z = q.rsample((k,))
    return z, q.log_prob(z)


def sample_and_log_prob(q: Distribution, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k draws z (k, B, d) and log q(z | x) (k, B), without gradient; a flow gives both at once.

    A diagonal Gaussian's log-density comes from the standard normal draws eps themselves,
    log q(z) = -eps.eps / 2 - sum log sigma - d/2 log(2 pi) for z = mu + sigma eps: the same
    value (to rounding; the same draws as ``q.sample``) in three operations on the (k, B, d)
    samples instead of torch's six."""
    with torch.no_grad():
        if (
            type(q) is Independent
            and type(q.base_dist) is Normal
            and q.reinterpreted_batch_ndims == 1
        ):
            loc, scale = q.base_dist.loc, q.base_dist.scale
            eps = torch.empty((k, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
            z = torch.addcmul(loc, eps, scale)
            log_norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (B,)
            return z, torch.linalg.vecdot(eps, eps).mul_(-0.5).sub_(log_norm)
        return rsample_and_log_prob(q, k)


def stop_parameters(q: Distribution) -> Distribution:
    r"""q with the gradient to its parameters stopped: log q_bar(z) still depends on z (the path),
    not on phi directly. This drops the score term E_q[grad_phi log q] (zero in expectation), as
    "sticking the landing" and DReG need (Roeder et al. 2017; Tucker et al. 2018)."""
    if hasattr(q, "stop_parameters"):
        return q.stop_parameters()
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        base = Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach(), validate_args=False)
        return Independent(base, q.reinterpreted_batch_ndims, validate_args=False)
    raise ValueError(
        f"{type(q).__name__} cannot evaluate log q(z) with its parameters' gradient stopped "
        "(a flow without an inverse): use objective.estimator = 'reparam'"
    )
