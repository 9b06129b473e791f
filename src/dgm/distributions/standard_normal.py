r"""The standard normal N(0, I) with a lean log-density, and closed-form Gaussian KLs."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence, register_kl
from torch.distributions.kl import _kl_independent_independent

from dgm.precision import autocast_off


class StandardNormal(Independent):
    r"""N(0, I) over the last dimension, ``Independent(Normal(0, 1), 1)`` with a lean ``log_prob``:

        log N(z; 0, I) = -z.z / 2 - d/2 log(2 pi)

    in two operations (torch's Normal takes a subtraction, a power, a division and two more
    subtractions per element, then the sum). The same value and gradient (-z); importance-sampled
    evaluation calls it on every sample.
    """

    def __init__(self, zeros: torch.Tensor, ones: torch.Tensor) -> None:
        """``zeros`` and ``ones`` (d,) or expanded: the location and scale, on the prior's
        device and dtype (``log_prob`` takes them to be 0 and 1)."""
        super().__init__(Normal(zeros, ones, validate_args=False), 1, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        d = value.shape[-1]
        value = value.to(torch.promote_types(value.dtype, self.base_dist.loc.dtype))
        log_norm = 0.5 * d * math.log(2 * math.pi)
        return torch.linalg.vecdot(value, value).mul(-0.5).sub(log_norm)

    def expand(self, batch_shape: torch.Size, _instance=None) -> StandardNormal:  # noqa: ANN001
        shape = (*batch_shape, self.base_dist.loc.shape[-1])
        return StandardNormal(self.base_dist.loc.expand(shape), self.base_dist.scale.expand(shape))


@register_kl(Independent, StandardNormal)
def _kl_to_standard_normal(q: Independent, p: StandardNormal) -> torch.Tensor:
    r"""KL(q || N(0, I)) for a diagonal Gaussian q over the last dimension, in closed form:

        sum_j (sigma_j^2 + mu_j^2 - 1) / 2 - log sigma_j

    the same value and gradient as torch's Normal-Normal formula with loc 0 and scale 1, in eight
    operations instead of eleven and one dispatch instead of two (a second dispatch is also a
    graph break under ``torch.compile``). Like :meth:`StandardNormal.log_prob` it takes p's
    location and scale to be 0 and 1. Any other q takes torch's own path."""
    base = q.base_dist
    if (
        type(base) is not Normal
        or q.reinterpreted_batch_ndims != 1
        or q.event_shape != p.event_shape
        or p.batch_shape not in (q.batch_shape, torch.Size())  # q's shape is the result's
    ):
        return _kl_independent_independent(q, p)
    # in the promoted dtype of q's and p's parameters, as torch's formula (which mixes them)
    # computes it, even under autocast (train.precision = "bfloat16" makes q's bfloat16)
    dtype = torch.promote_types(base.loc.dtype, p.base_dist.loc.dtype)
    loc, scale = base.loc.to(dtype), base.scale.to(dtype)  # (..., d) each, broadcast by Normal
    with autocast_off(loc.device.type):
        square_sum = torch.linalg.vecdot(loc, loc) + torch.linalg.vecdot(scale, scale)
        return 0.5 * (square_sum - loc.shape[-1]) - scale.log().sum(-1)


def kl_to_prior(q: Distribution, p: Distribution) -> torch.Tensor:
    """``kl_divergence(q, p)``, with a diagonal Gaussian q against :class:`StandardNormal` sent
    straight to its closed form: torch's type dispatch is a graph break under ``torch.compile``
    (``train.compile``), which split the compiled training step in two."""
    if isinstance(p, StandardNormal) and type(q) is Independent:
        return _kl_to_standard_normal(q, p)
    return kl_divergence(q, p)


def normal_kl(q: Normal, p: Normal) -> torch.Tensor:
    r"""KL(q || p) of two univariate Gaussians, elementwise (their broadcast shape):

        log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2

    torch's Normal-Normal formula, called directly: ``kl_divergence`` dispatches on the types,
    a graph break under ``torch.compile`` (free bits need the KL per latent unit, which the
    closed form of :func:`kl_to_prior` sums). In the promoted dtype of q's and p's parameters,
    with autocast off, as :func:`_kl_to_standard_normal`."""
    dtype = torch.promote_types(q.loc.dtype, p.loc.dtype)
    with autocast_off(q.loc.device.type):
        var_ratio = (q.scale.to(dtype) / p.scale.to(dtype)).pow(2)
        t1 = ((q.loc.to(dtype) - p.loc.to(dtype)) / p.scale.to(dtype)).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
